"""Log-likelihood of a continuation given a prompt, under a run's chat template.

The shared primitive of label scoring (classification AUC) and multiple-choice benchmarks:
the prompt is rendered with the template's generation prompt (so the continuation sits
exactly where the model's answer would), the continuation is tokenized on its own and its
tokens' log-probabilities are summed. This is the scoring rule of MMLU (Hendrycks et al., 2021)
and of lm-evaluation-harness's `loglikelihood` requests.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch

from tunelab.data.templates import prompt_ids
from tunelab.data.tokenize import prompt_tail


def _encode(tokenizer, template: str, prompt: list[dict], continuation: str, max_length: int) -> tuple[list[int], int]:
    """(ids, number of continuation tokens at the end).

    A prompt longer than `max_length` keeps its last `max_length` tokens, whatever the
    continuation, so every option of one question is scored on the same context.
    """
    p = prompt_ids(tokenizer, template, prompt)
    c = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    if not c:
        raise ValueError(f"continuation {continuation!r} has no tokens; every option needs text")
    return prompt_tail(p, max_length) + c, len(c)


@torch.no_grad()
def continuation_logprobs(model, tokenizer, template: str, prompts: Sequence[list[dict]],
                          continuations: Sequence[str], batch_size: int = 8,
                          max_length: int = 2048) -> list[tuple[float, int]]:
    """(summed log p(continuation | prompt), continuation token count) for each pair, in nats.

    `prompts[i]` is a message list ending with the user's turn; `continuations[i]` the answer
    text to score. Rows are right-padded, so positions match an unpadded forward pass.
    """
    if len(prompts) != len(continuations):
        raise ValueError(f"got {len(prompts)} prompts but {len(continuations)} continuations")
    model.eval()
    device = next(model.parameters()).device
    encoded = [_encode(tokenizer, template, p, c, max_length) for p, c in zip(prompts, continuations)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out: list[tuple[float, int]] = []
    for i in range(0, len(encoded), batch_size):
        chunk = encoded[i:i + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for j, (row, _) in enumerate(chunk):
            ids[j, :len(row)] = torch.tensor(row)
            mask[j, :len(row)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
        logp = torch.log_softmax(logits.float(), dim=-1)  # (B, T, V)
        for j, (row, n) in enumerate(chunk):
            # token t is predicted at position t-1
            pos = torch.arange(len(row) - n - 1, len(row) - 1, device=logp.device)  # (n,)
            target = ids[j, len(row) - n:len(row)].to(logp.device)  # (n,)
            out.append((float(logp[j, pos, target].sum()), n))
    return out


def _score_chunk(model, prompt_cache, first: torch.Tensor, prompt_len: int, chunk: list[list[int]], pad: int,
                 device) -> list[tuple[float, int]]:
    """(summed log-prob, token count) of each option in `chunk` after a cached prompt of `prompt_len` tokens.

    `first` holds the log-probabilities after the prompt (they score every option's first token);
    the options' other tokens come from one forward of the right-padded options over a copy of the
    prompt cache repeated once per option. Padding sits after each option, so it never changes
    the positions that are read.
    """
    width = max(len(c) for c in chunk)
    lp = None
    if width > 1:  # positions 0..width-2 of the options predict their tokens 1..width-1
        ids = torch.full((len(chunk), width - 1), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), prompt_len + width - 1), dtype=torch.long)
        mask[:, :prompt_len] = 1
        for j, c in enumerate(chunk):
            ids[j, :len(c) - 1] = torch.tensor(c[:-1], dtype=torch.long)
            mask[j, prompt_len:prompt_len + len(c) - 1] = 1
        cache = copy.deepcopy(prompt_cache)  # the prompt's cache serves every chunk, so expand a copy
        cache.batch_repeat_interleave(len(chunk))
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), cache=cache,
                       use_cache=True).logits  # (B, width-1, V)
        lp = torch.log_softmax(logits.float(), dim=-1)
    out = []
    for j, c in enumerate(chunk):
        total = first[c[0]]
        if len(c) > 1:
            target = torch.tensor(c[1:], device=lp.device)  # (n-1,)
            total = total + lp[j, torch.arange(len(c) - 1, device=lp.device), target].sum()
        out.append((float(total), len(c)))
    return out


def _is_prompt_learning(model) -> bool:
    """A PEFT soft-prompt/prefix model: it owns past_key_values itself, so a shared prompt cache cannot be passed."""
    config = getattr(model, "active_peft_config", None)
    return bool(getattr(config, "is_prompt_learning", False))


@torch.no_grad()
def option_logprobs(model, tokenizer, template: str, prompts: Sequence[list[dict]],
                    options: Sequence[Sequence[str]], batch_size: int = 8,
                    max_length: int = 2048) -> list[list[tuple[float, int]]]:
    """For each prompt, (summed log p(option | prompt), option token count) of each of its options, in nats.

    The same numbers as `continuation_logprobs` on every (prompt, option) pair, but the prompt runs
    once: its key/value cache is expanded to one row per option and only the option tokens go
    through the model (up to `batch_size` options per forward). With k labels that saves k - 1
    prompt passes and the (T, V) logits of every prompt position, which dominate label scoring.
    PEFT prompt-learning models (prefix/prompt tuning) manage the cache themselves; they take the
    per-pair path.
    """
    if len(prompts) != len(options):
        raise ValueError(f"got {len(prompts)} prompts but {len(options)} option lists")
    if _is_prompt_learning(model):
        flat = continuation_logprobs(model, tokenizer, template, [p for p, opts in zip(prompts, options) for _ in opts],
                                     [o for opts in options for o in opts], batch_size, max_length)
        out, k = [], 0
        for opts in options:
            out.append(flat[k:k + len(opts)])
            k += len(opts)
        return out
    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    results: list[list[tuple[float, int]]] = []
    for prompt, opts in zip(prompts, options):
        conts = []
        for text in opts:
            c = tokenizer(text, add_special_tokens=False)["input_ids"]
            if not c:
                raise ValueError(f"continuation {text!r} has no tokens; every option needs text")
            conts.append(c)
        p = prompt_tail(prompt_ids(tokenizer, template, prompt), max_length)
        out = model(input_ids=torch.tensor([p], device=device), use_cache=True, logits_to_keep=1)
        if out.cache is None:  # a model that returns no cache (e.g. caching switched off in its config)
            results.append(continuation_logprobs(model, tokenizer, template, [prompt] * len(opts), list(opts),
                                                 batch_size, max_length))
            continue
        first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)  # (V,) predicts each option's first token
        step = max(batch_size, 1)
        scores = [s for i in range(0, len(conts), step)
                  for s in _score_chunk(model, out.cache, first, len(p), conts[i:i + step], pad, device)]
        results.append(scores)
    return results
