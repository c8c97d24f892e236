"""Generation with a run's own chat template: batched prediction and streaming chat."""

from __future__ import annotations

from threading import Thread
from typing import Iterator

import torch

from tunelab.data.templates import prompt_ids, stop_token_ids


def _gen_kwargs(tokenizer, template: str, max_new_tokens: int, temperature: float, top_p: float) -> dict:
    kw = {"max_new_tokens": max_new_tokens, "eos_token_id": stop_token_ids(tokenizer, template),
          "pad_token_id": tokenizer.pad_token_id}
    if temperature > 0:
        kw.update(do_sample=True, temperature=temperature, top_p=top_p)
    else:
        kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    return kw


@torch.no_grad()
def generate(model, tokenizer, template: str, conversations: list[list[dict]], max_new_tokens: int = 128,
             temperature: float = 0.0, top_p: float = 1.0, batch_size: int = 8) -> list[str]:
    """Answer each conversation (a list of messages ending with the user's turn); greedy by default."""
    model.eval()
    device = next(model.parameters()).device
    kw = _gen_kwargs(tokenizer, template, max_new_tokens, temperature, top_p)
    outputs: list[str] = []
    for i in range(0, len(conversations), batch_size):
        prompts = [prompt_ids(tokenizer, template, msgs) for msgs in conversations[i:i + batch_size]]
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for j, p in enumerate(prompts):  # left padding, so every row continues from its own last token
            ids[j, width - len(p):] = torch.tensor(p)
            mask[j, width - len(p):] = 1
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kw)
        for row in out[:, width:]:
            outputs.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    return outputs


def stream_chat(model, tokenizer, template: str, messages: list[dict], max_new_tokens: int = 256,
                temperature: float = 0.0, top_p: float = 1.0) -> Iterator[str]:
    """Yield the answer to a conversation piece by piece as it is generated."""
    from transformers import TextIteratorStreamer

    model.eval()
    device = next(model.parameters()).device
    ids = torch.tensor([prompt_ids(tokenizer, template, messages)], device=device)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    kw = _gen_kwargs(tokenizer, template, max_new_tokens, temperature, top_p)
    thread = Thread(target=lambda: model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                                  streamer=streamer, **kw), daemon=True)
    with torch.no_grad():
        thread.start()
        yield from streamer
        thread.join()
