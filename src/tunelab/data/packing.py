"""Packing: several tokenized samples per row, no padding inside, no attention across samples.

A packed row is samples laid back to back. Three things keep it equal to training the samples
one by one (tested: same loss and gradients as the unpacked batch):

- `position_ids` restart at 0 at every sample, so rotary positions are the sample's own;
- attention stays inside each sample: the forward passes `position_ids` and no 2-D mask, and
  transformers (sdpa/eager/flex/flash) or `tunelab.kernels.varlen` derive the block-diagonal
  causal mask from where positions restart;
- the first token of each sample carries no label, so it is never predicted from the tail of
  the previous sample.

Rows are filled by best-fit decreasing (Johnson 1973): longest samples first, each into the
open row with the least room that still fits it.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import torch

from tunelab.data.templates import IGNORE_INDEX, Tokenized


@dataclass
class PackedRow(Tokenized):
    """A row of samples back to back; `lengths` are the sample lengths in order (they sum to len(input_ids))."""

    lengths: list[int] | None = None


def best_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Group item indices into bins of at most `capacity` total length (best-fit decreasing).

    Deterministic: ties keep the original order. An item longer than `capacity` raises ValueError.
    """
    too_long = [i for i, n in enumerate(lengths) if n > capacity]
    if too_long:
        raise ValueError(f"sample {too_long[0]} has {lengths[too_long[0]]} tokens, more than the row length {capacity}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # sorted (room left, bin index)
    for i in order:
        k = bisect.bisect_left(free, (lengths[i], -1))
        if k == len(free):
            bins.append([i])
            room, b = capacity - lengths[i], len(bins) - 1
        else:
            room, b = free.pop(k)
            bins[b].append(i)
            room -= lengths[i]
        if room > 0:
            bisect.insort(free, (room, b))
    return bins


def pack(samples: list[Tokenized], max_length: int) -> list[PackedRow]:
    """Pack samples into rows of at most `max_length` tokens; each sample's first label is masked."""
    rows = []
    for group in best_fit_decreasing([len(s.input_ids) for s in samples], max_length):
        ids: list[int] = []
        labels: list[int] = []
        for i in group:
            s = samples[i]
            ids += s.input_ids
            labels += [IGNORE_INDEX] + s.labels[1:]
        rows.append(PackedRow(ids, labels, any(samples[i].truncated for i in group),
                              lengths=[len(samples[i].input_ids) for i in group]))
    return rows


def pack_stats(samples: list[Tokenized], rows: list[PackedRow], max_length: int) -> dict:
    """Fill rate of the packed rows and the padding saved against padding each sample to max_length.

    `fill_rate` = real tokens / (rows * max_length). `padded_batch_tokens_saved` compares with plain
    per-sample padding to the longest sample of the set (the upper bound of dynamic padding).
    """
    tokens = sum(len(s.input_ids) for s in samples)
    longest = max((len(s.input_ids) for s in samples), default=0)
    return {
        "packed_rows": len(rows),
        "samples": len(samples),
        "tokens": tokens,
        "fill_rate": tokens / max(len(rows) * max_length, 1),
        "unpacked_fill_rate": tokens / max(len(samples) * longest, 1),
        "rows_saved": 1 - len(rows) / max(len(samples), 1),
    }


def pad_rows(rows, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad samples into (input_ids, labels, attention_mask), each (B, T); labels -100 on padding."""
    width = max(len(r.input_ids) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r.input_ids)
        ids[i, :n] = torch.tensor(r.input_ids)
        labels[i, :n] = torch.tensor(r.labels)
        mask[i, :n] = 1
    return ids, labels, mask


def collate_packed(rows: list[Tokenized], pad_id: int) -> dict[str, torch.Tensor]:
    """Packed rows -> input_ids / labels / position_ids / attention_mask, each (B, T).

    Rows shorter than the longest are right-padded; the padding is its own segment (positions
    restart at 0) with no labels, so no real token attends to it. `attention_mask` (1 on real
    tokens) is kept for token counting only; the model forward uses `position_ids` instead.
    """
    ids, labels, mask = pad_rows(rows, pad_id)
    width = ids.size(1)
    pos = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        n = len(r.input_ids)
        lengths = getattr(r, "lengths", None) or [n]
        pos[i, :n] = torch.cat([torch.arange(k) for k in lengths])
        pos[i, n:] = torch.arange(width - n)
    return {"input_ids": ids, "labels": labels, "position_ids": pos, "attention_mask": mask}


def model_inputs(batch: dict) -> dict:
    """Forward keyword arguments for a padded or a packed batch.

    Packed (has `position_ids`): positions and no 2-D mask, so transformers builds the packed
    (block-diagonal causal) mask from where positions restart, and the `tunelab_varlen` attention
    (`tunelab.kernels.varlen`) derives the same documents from them. Padded: the usual 2-D mask.
    """
    if "position_ids" in batch:
        return {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"]}
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
