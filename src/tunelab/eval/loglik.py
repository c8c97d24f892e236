"""Log-likelihood of a continuation given a prompt, under a run's chat template.

The shared primitive of label scoring (classification AUC) and multiple-choice benchmarks:
the prompt is rendered with the template's generation prompt (so the continuation sits
exactly where the model's answer would), the continuation is tokenized on its own and its
tokens' log-probabilities are summed. This is the scoring rule of MMLU (Hendrycks et al., 2021)
and of lm-evaluation-harness's `loglikelihood` requests.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tunelab.data.templates import prompt_ids


def _encode(tokenizer, template: str, prompt: list[dict], continuation: str, max_length: int) -> tuple[list[int], int]:
    """(ids, number of continuation tokens at the end).

    A prompt longer than `max_length` keeps its last `max_length` tokens, whatever the
    continuation, so every option of one question is scored on the same context.
    """
    p = prompt_ids(tokenizer, template, prompt)
    c = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    if not c:
        raise ValueError(f"continuation {continuation!r} has no tokens; every option needs text")
    return p[-max_length:] + c, len(c)


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
