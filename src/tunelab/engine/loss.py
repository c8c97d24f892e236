"""Token-level losses shared by the stages."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tunelab.data.templates import IGNORE_INDEX  # -100: the one label value of a position that is not a target

__all__ = ["IGNORE_INDEX", "causal_lm_loss_sum", "count_targets"]


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
