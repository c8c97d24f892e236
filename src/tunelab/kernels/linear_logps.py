"""Per-token log-probabilities of the labels from hidden states, without the full (N, V) logits.

Preference losses (DPO, IPO, ORPO, SimPO, KTO) and the reference model need ``log p(label_t)`` for every
answer token. Computed from ``model(...).logits`` this holds the (B, T, V) logits, their float32 copy for the
log-softmax and, in training, the gradient of the logits: for 4 pairs x 192 tokens and a 49k vocabulary
that is about 300 MB each, and autograd keeps them until the backward pass. Here the tokens are cut into
chunks; each chunk's logits are made from ``hidden @ W.T``, reduced to ``logit[label] - logsumexp`` and
dropped. Only the (N,) log-sum-exps are kept; the backward pass makes each chunk's logits again and turns
them into the gradients w.r.t. hidden (and weight / bias when they train). Peak extra memory is one chunk's
logits, at the price of one more ``hidden @ W.T`` in training. The same idea as
`tunelab.kernels.linear_ce` (which can fold the gradient into the forward pass because its loss is a plain
sum; log-probs feed a loss of their own, so their upstream gradient is known only in backward).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from tunelab.kernels.linear_ce import IGNORE_INDEX, shift_labels

DEFAULT_BUDGET = 1 << 24
"""Logit values per chunk when no chunk size is given: 64 MiB of float32 (256 tokens for a 49k vocabulary)."""


def chunk_tokens(vocab_size: int, budget_elems: int = DEFAULT_BUDGET) -> int:
    """Tokens per chunk so that one chunk's logits hold at most about ``budget_elems`` values (>= 16, power of 2)."""
    n = max(1, budget_elems // max(vocab_size, 1))
    return max(16, 1 << (n.bit_length() - 1))


class ChunkedLinearTokenLogps(torch.autograd.Function):
    """``log_softmax(hidden @ weight.T + bias)[label]`` per token, chunk by chunk; 0 where the label is ignored."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor, ignore_index: int,
                chunk_size: int) -> Tensor:
        # hidden (N, H), weight (V, H), bias (V,) | None, labels (N,)
        acc = torch.promote_types(hidden.dtype, torch.float32)
        valid = labels != ignore_index  # (N,)
        safe = labels.masked_fill(~valid, 0)  # any valid id; masked out below
        logps = torch.zeros(hidden.shape[0], dtype=acc, device=hidden.device)  # (N,)
        lse = torch.zeros_like(logps)  # (N,)
        for start in range(0, hidden.shape[0], chunk_size):
            end = start + chunk_size
            logits = F.linear(hidden[start:end], weight, bias).to(acc)  # (n, V)
            lse[start:end] = torch.logsumexp(logits, dim=-1)
            picked = logits.gather(1, safe[start:end, None]).squeeze(1)  # (n,)
            logps[start:end] = (picked - lse[start:end]) * valid[start:end]
        ctx.save_for_backward(hidden, weight, bias, safe, valid, lse)
        ctx.chunk_size = chunk_size
        return logps

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        hidden, weight, bias, safe, valid, lse = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        acc = lse.dtype
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=acc, device=bias.device) if bias is not None and need_b else None
        g_all = grad_out.to(acc) * valid  # (N,) upstream gradient, 0 off the targets
        for start in range(0, hidden.shape[0], ctx.chunk_size):
            end = start + ctx.chunk_size
            h = hidden[start:end]  # (n, H)
            g = g_all[start:end, None]  # (n, 1)
            logits = F.linear(h, weight, bias).to(acc)  # (n, V)
            # d logp / d logits = onehot(label) - softmax
            grad = torch.exp(logits - lse[start:end, None]).mul_(-g)  # (n, V)
            grad.scatter_add_(1, safe[start:end, None], g)
            if grad_h is not None:
                grad_h[start:end] = grad.to(hidden.dtype) @ weight.to(hidden.dtype)
            if grad_w is not None:
                grad_w += grad.t() @ h.to(acc)  # (V, H)
            if grad_b is not None:
                grad_b += grad.sum(0)
        return (grad_h, None if grad_w is None else grad_w.to(weight.dtype),
                None if grad_b is None else grad_b.to(bias.dtype), None, None, None)


def linear_token_logps(hidden: Tensor, weight: Tensor, labels: Tensor, bias: Tensor | None = None, *,
                       ignore_index: int = IGNORE_INDEX, chunk_size: int | None = None) -> Tensor:
    """``log p(labels)`` under the logits ``hidden @ weight.T (+ bias)``, never holding all the logits.

    hidden: ``(..., H)``; weight: ``(V, H)``; labels: ``(...)``, already the targets of each position
    (``ignore_index`` where none). Returns ``(...)`` float32 (float64 for float64 inputs), 0 at ignored positions;
    differentiable w.r.t. hidden, weight and bias. ``chunk_size``: tokens per chunk (default: about 2**24 logits).
    """
    if hidden.shape[:-1] != labels.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} and labels {tuple(labels.shape)} disagree on the token dims")
    chunk = chunk_size or chunk_tokens(weight.shape[0])
    flat = ChunkedLinearTokenLogps.apply(hidden.reshape(-1, hidden.shape[-1]), weight, bias, labels.reshape(-1),
                                         ignore_index, chunk)
    return flat.view(labels.shape)


def linear_sequence_logps(hidden: Tensor, weight: Tensor, labels: Tensor, bias: Tensor | None = None, *,
                          chunk_size: int | None = None) -> Tensor:
    """Summed answer log-probs ``(B,)`` from hidden states ``(B, T, H)`` and input-aligned labels ``(B, T)``.

    The chunked equal of ``tunelab.training.common.sequence_logps(hidden @ weight.T, labels)``: position ``t``
    predicts the label at ``t + 1``, ``-100`` marks positions that are not targets.
    """
    return linear_token_logps(hidden, weight, shift_labels(labels), bias, chunk_size=chunk_size).sum(-1)
