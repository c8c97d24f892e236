"""Rollout: prompt batches and completions sampled from the policy (grpo, ppo, selftrain's rejection mode).

Prompts are left-padded so generation continues from each row's last token; ``completion_batch`` turns the
sampled sequences into inputs, labels and positions for scoring them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from tunelab.data.templates import IGNORE_INDEX, prompt_ids
from tunelab.data.tokenize import prompt_tail
from tunelab.engine.loop import LOSS_COUNT_KEY


@dataclass
class PromptSample:
    """A prompt (messages ending with the user turn), its token ids and the reference answer."""

    prompt: list[dict]
    ids: list[int]
    answer: str
    columns: dict = field(default_factory=dict)  # the record's other columns (for TRL-convention rewards)
    conversational: bool = True  # the record was messages/sharegpt (TRL's conversational format)


def prompt_samples(cfg_data, tokenizer, template: str, convs: list) -> list[PromptSample]:
    """Prompts from conversations: every message before the last assistant turn; that turn is the answer."""
    from tunelab.data.formats import CHAT_FORMATS

    out = []
    for conv in convs:
        msgs = conv.messages
        ids = prompt_tail(prompt_ids(tokenizer, template, msgs[:-1]), cfg_data.max_length)  # the one rule
        out.append(PromptSample(msgs[:-1], ids, msgs[-1]["content"], dict(conv.meta.get("columns", {})),
                                conv.meta.get("format", "messages") in CHAT_FORMATS))
    return out


def reward_context(batch: dict, n: int, completion_ids: list[list[int]]) -> dict:
    """What TRL-convention reward functions receive besides the texts, each prompt's repeated for its n samples."""
    return {"completion_ids": completion_ids, "columns": [c for c in batch["columns"] for _ in range(n)],
            "conversational": all(batch["conversational"])}


def collate_prompts(samples: list[PromptSample], pad_id: int) -> dict:
    """Left-padded (B, P) prompts (generation continues from each row's last token) and their answers."""
    width = max(len(s.ids) for s in samples)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(samples):
        ids[i, width - len(s.ids):] = torch.tensor(s.ids)
        mask[i, width - len(s.ids):] = 1
    return {"input_ids": ids, "attention_mask": mask, LOSS_COUNT_KEY: len(samples),
            "answers": [s.answer for s in samples], "prompts": [s.prompt for s in samples],
            "columns": [s.columns for s in samples], "conversational": [s.conversational for s in samples]}


def completion_batch(sequences: Tensor, prompt_mask: Tensor, stop_ids: list[int], pad_id: int) -> dict:
    """Inputs, labels and positions for scoring sampled sequences ``(N, P + L)``.

    A completion runs up to and including its first stop token; later positions are masked. Position ids
    follow the attention mask, as they did during generation with left-padded prompts.
    """
    width = prompt_mask.size(1)
    completion = sequences[:, width:]  # (N, L)
    is_stop = torch.isin(completion, torch.tensor(stop_ids, device=completion.device))
    after_stop = (is_stop.cumsum(-1) - is_stop.long()) > 0  # positions after the first stop token
    completion_mask = (~after_stop).long()  # (N, L)
    attention = torch.cat([prompt_mask, completion_mask], dim=1)  # (N, P + L)
    labels = torch.full_like(sequences, IGNORE_INDEX)
    labels[:, width:] = completion.masked_fill(after_stop, IGNORE_INDEX)
    input_ids = sequences.masked_fill(attention == 0, pad_id)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels, "position_ids": positions}


@torch.no_grad()
def sample_completions(model, batch: dict, n: int, gen, stop_ids: list[int], pad_id: int) -> Tensor:
    """``n`` sampled continuations of each left-padded prompt: ``(B * n, P + L)``, prompt p's at rows p*n .. p*n+n-1.

    ``gen`` carries ``temperature``, ``top_p`` and ``max_new_tokens``. Sampling runs in eval mode (no dropout).
    """
    was_training = model.training
    model.eval()
    out = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], do_sample=True,
                         temperature=gen.temperature, top_p=gen.top_p, max_new_tokens=gen.max_new_tokens,
                         num_return_sequences=n, eos_token_id=stop_ids, pad_token_id=pad_id)
    model.train(was_training)
    return out
