"""Preference pairs: a prompt with a chosen and a rejected answer, tokenized and batched (preference, reward).

Both answers share the prompt's tokens and the shared truncation rule (tunelab.data.tokenize.join_truncated);
one batch scores chosen and rejected rows in one forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tunelab.data.pipeline import collate
from tunelab.data.templates import Tokenized, split_prompt_answer
from tunelab.data.tokenize import encode, join_truncated
from tunelab.engine.loop import LOSS_COUNT_KEY


@dataclass
class PairSample:
    """A tokenized preference pair; ``ref`` holds precomputed reference log-probs (chosen, rejected)."""

    chosen: Tokenized
    rejected: Tokenized
    ref: tuple[float, float] | None = None


def pair_samples(examples: list, tokenizer, template: str, max_length: int) -> list[PairSample]:
    """Tokenize preference examples into chosen/rejected sequences sharing the prompt."""
    out = []
    for ex in examples:
        prompt_text, chosen_text = split_prompt_answer(tokenizer, template, ex.prompt, ex.chosen, ex.where)
        _, rejected_text = split_prompt_answer(tokenizer, template, ex.prompt, ex.rejected, ex.where)
        prompt = encode(tokenizer, prompt_text)
        out.append(PairSample(join_truncated(prompt, encode(tokenizer, chosen_text), max_length),
                              join_truncated(prompt, encode(tokenizer, rejected_text), max_length)))
    return out


def collate_pairs(samples: list[PairSample], pad_id: int) -> dict:
    """One (2B, T) batch: rows 0..B-1 chosen, rows B..2B-1 rejected (one forward pass scores both)."""
    batch = collate([s.chosen for s in samples] + [s.rejected for s in samples], pad_id)
    batch[LOSS_COUNT_KEY] = len(samples)  # the loss is a mean over pairs
    if all(s.ref is not None for s in samples):
        batch["ref_logps"] = torch.tensor([s.ref[0] for s in samples] + [s.ref[1] for s in samples])  # (2B,)
    return batch
