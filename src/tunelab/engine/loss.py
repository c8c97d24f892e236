"""Token-level losses shared by the stages."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tunelab.data.templates import IGNORE_INDEX  # -100: the one label value of a position that is not a target

__all__ = ["IGNORE_INDEX", "LOSS_COUNT_KEY", "add_metrics", "causal_lm_loss_sum", "count_targets", "loss_count",
           "mean_metrics"]


def count_targets(labels: torch.Tensor) -> int:
    """Tokens that contribute to a causal-LM loss (labels shifted by one, -100 ignored)."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


def causal_lm_loss_sum(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Summed next-token cross-entropy over target tokens; the caller divides by the global token count.

    Summing here (not averaging) is what makes gradient accumulation and packing exact: the
    normalizer is the number of target tokens in the whole accumulated batch.
    """
    shift_logits = logits[:, :-1, :].float()  # (B, T-1, V)
    shift_labels = labels[:, 1:]  # (B, T-1)
    return F.cross_entropy(shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="sum", label_smoothing=label_smoothing)


LOSS_COUNT_KEY = "loss_count"
"""Batch key a collator sets when its loss is not per target token (pairs, examples): the normalizer it adds."""


def loss_count(batch: dict) -> int:
    """What a batch adds to the accumulated normalizer: its `loss_count` if set, else its target tokens.

    Stages whose loss is a mean over pairs or examples (DPO, reward, classify) set `loss_count` in their
    collator and return `(mean loss * n, n)`, so accumulation stays exact for them too.
    """
    if LOSS_COUNT_KEY in batch:
        return int(batch[LOSS_COUNT_KEY])
    return count_targets(batch["labels"])


def add_metrics(into: dict | None, extra: dict | None, weight: int) -> None:
    """Accumulate `weight`-weighted sums of scalar metrics (divided by the total weight in `mean_metrics`)."""
    if into is None or not extra:
        return
    into["__weight__"] = into.get("__weight__", 0) + weight
    for k, v in extra.items():
        into[k] = into.get(k, 0.0) + float(v) * weight


def mean_metrics(sums: dict) -> dict:
    """Turn the sums `add_metrics` collected into weighted means, in place (and return them)."""
    weight = sums.pop("__weight__", 0)
    means = {k: v / weight for k, v in sums.items()} if weight else {}
    sums.clear()
    sums.update(means)
    return means
