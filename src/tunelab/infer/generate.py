"""Generation with a run's own chat template: batched prediction and streaming chat.

Every answer stops at the template's end-of-turn token(s) (``stop_token_ids``: the tokenizer's EOS, the
markers the template writes such as ``<|im_end|>``, and the model's ``generation_config.eos_token_id``).

Repetition control: ``repetition_penalty`` (CTRL, Keskar et al. 2019, Sec. 4.1: a positive logit is
divided by the penalty, a negative one multiplied) is applied to the tokens of the *answer* only, not to
the prompt's, so a small model is kept out of loops (``皇上皇上皇上...``) without being pushed away from
the names and words of the question. Open chat (``tunelab chat``, ``stream_chat``, the studio's chat)
uses ``CHAT_REPETITION_PENALTY`` by default; scoring and batch prediction (``generate``: ``tunelab eval``,
``tunelab generate``) decode plainly (1.0) unless asked, so their numbers stay comparable.
"""

from __future__ import annotations

from dataclasses import dataclass
from threading import Thread
from typing import Iterator

import torch

from tunelab.data.templates import prompt_ids, stop_token_ids

CHAT_REPETITION_PENALTY = 1.1  # mild: the value Qwen and many chat models ship in their generation_config


class AnswerRepetitionPenalty:
    """A logits processor: CTRL's repetition penalty over the generated tokens only (columns from ``start``).

    ``input_ids`` is ``(B, start + generated)``; with left-padded prompts every row's answer starts at the
    same column ``start``.
    """

    def __init__(self, penalty: float, start: int) -> None:
        if penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0 (1.0 = off), got {penalty}")
        self.penalty, self.start = penalty, start

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        answer = input_ids[:, self.start:]  # (B, generated)
        if answer.numel() == 0:
            return scores
        seen = scores.gather(1, answer)  # (B, generated) logits of tokens already in the answer
        seen = torch.where(seen > 0, seen / self.penalty, seen * self.penalty)
        return scores.scatter(1, answer, seen)


def generation_stop_ids(model, tokenizer, template: str) -> list[int]:
    """Token ids that end an answer: the template's (``stop_token_ids``) plus the model's generation_config EOS."""
    ids = stop_token_ids(tokenizer, template)
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for i in [eos] if isinstance(eos, int) else (eos or []):
        if i not in ids:
            ids.append(int(i))
    return ids


def _gen_kwargs(model, tokenizer, template: str, max_new_tokens: int, temperature: float, top_p: float,
                repetition_penalty: float, prompt_width: int) -> dict:
    kw = {"max_new_tokens": max_new_tokens, "eos_token_id": generation_stop_ids(model, tokenizer, template),
          "pad_token_id": tokenizer.pad_token_id}
    if temperature > 0:
        kw.update(do_sample=True, temperature=temperature, top_p=top_p)
    else:
        kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    if repetition_penalty != 1.0:
        from transformers import LogitsProcessorList

        kw["logits_processor"] = LogitsProcessorList([AnswerRepetitionPenalty(repetition_penalty, prompt_width)])
    return kw


@dataclass
class Answer:
    """One generated answer: its text, whether it ended on a stop token (not the token limit), its length."""

    text: str
    ended: bool
    n_tokens: int


@torch.no_grad()
def generate_answers(model, tokenizer, template: str, conversations: list[list[dict]], max_new_tokens: int = 128,
                     temperature: float = 0.0, top_p: float = 1.0, batch_size: int = 8,
                     repetition_penalty: float = 1.0) -> list[Answer]:
    """Answer each conversation (messages ending with the user's turn), with how each answer ended."""
    model.eval()
    device = next(model.parameters()).device
    stops = generation_stop_ids(model, tokenizer, template)
    outputs: list[Answer] = []
    for i in range(0, len(conversations), batch_size):
        prompts = [prompt_ids(tokenizer, template, msgs) for msgs in conversations[i:i + batch_size]]
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for j, p in enumerate(prompts):  # left padding, so every row continues from its own last token
            ids[j, width - len(p):] = torch.tensor(p)
            mask[j, width - len(p):] = 1
        kw = _gen_kwargs(model, tokenizer, template, max_new_tokens, temperature, top_p, repetition_penalty, width)
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kw)
        for row in out[:, width:].tolist():
            end = next((k for k, t in enumerate(row) if t in stops), None)
            kept = row if end is None else row[:end]
            outputs.append(Answer(tokenizer.decode(kept, skip_special_tokens=True).strip(), end is not None,
                                  len(kept)))
    return outputs


def generate(model, tokenizer, template: str, conversations: list[list[dict]], max_new_tokens: int = 128,
             temperature: float = 0.0, top_p: float = 1.0, batch_size: int = 8,
             repetition_penalty: float = 1.0) -> list[str]:
    """Answer each conversation (a list of messages ending with the user's turn); greedy by default."""
    return [a.text for a in generate_answers(model, tokenizer, template, conversations, max_new_tokens,
                                             temperature, top_p, batch_size, repetition_penalty)]


def stream_chat(model, tokenizer, template: str, messages: list[dict], max_new_tokens: int = 256,
                temperature: float = 0.0, top_p: float = 1.0,
                repetition_penalty: float = CHAT_REPETITION_PENALTY) -> Iterator[str]:
    """Yield the answer to a conversation piece by piece as it is generated (stops at the template's end)."""
    from transformers import TextIteratorStreamer

    model.eval()
    device = next(model.parameters()).device
    ids = torch.tensor([prompt_ids(tokenizer, template, messages)], device=device)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    kw = _gen_kwargs(model, tokenizer, template, max_new_tokens, temperature, top_p, repetition_penalty, ids.size(1))
    thread = Thread(target=lambda: model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                                  streamer=streamer, **kw), daemon=True)
    with torch.no_grad():
        thread.start()
        yield from streamer
        thread.join()
