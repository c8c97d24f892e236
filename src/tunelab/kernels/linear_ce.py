"""Linear + cross-entropy without the full (N, V) logits.

A causal LM's last step is `logits = hidden @ W.T` followed by cross-entropy. With a
152k vocabulary and 8k tokens the logits alone take 2.5 GB in bf16 and 5 GB once
upcast to fp32, and autograd keeps them for the backward pass. Here the tokens are cut
into chunks; each chunk's logits are made, turned into its loss and its gradients
(w.r.t. hidden, weight and bias) at once, and dropped. Peak extra memory is one chunk's
logits. The gradients are stored during the forward call, so `backward` only scales
them (the approach of Liger-Kernel's fused linear cross-entropy, Hsu et al. 2024,
"Liger Kernel: Efficient Triton Kernels for LLM Training", arXiv:2410.10989).

On a CPU only the target tokens' rows are projected at all (prompt and padding tokens carry no
loss and get a zero gradient), and each chunk's loss and gradient come from one `log_softmax`
turned into the softmax in place, instead of the ~8 (n, V) passes and allocations of the general
chunk math; on a 2-core CPU this halves the loss's time for SmolLM2's 49k vocabulary.

Loss convention: reduction is a **sum** over target tokens (label != ignore_index);
the caller divides by the number of target tokens of the whole accumulated batch, as
the engine does. Label smoothing follows `torch.nn.functional.cross_entropy`:
`(1 - eps) * nll + eps * mean_c(-log p_c)` (Szegedy et al. 2016, arXiv:1512.00567).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

from tunelab.data.templates import IGNORE_INDEX  # the one definition (data layer), so masks agree everywhere


def _ce_chunk(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int, label_smoothing: float,
              grad_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss sum and d(loss)/d(logits) of one chunk.

    logits: (n, V) any float dtype; labels: (n,). Returns the scalar loss sum (fp32, or fp64
    for fp64 logits) and the (n, V) gradient in `grad_dtype` (default: the loss's dtype).
    A pure function, so torch.compile can fuse it into a few passes.
    """
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()                                    # (n, V) at least fp32
    valid = labels != ignore_index                                 # (n,)
    safe = torch.where(valid, labels, torch.zeros_like(labels))    # (n,)
    lse = torch.logsumexp(logits, dim=-1)                          # (n,)
    target = logits.gather(1, safe[:, None]).squeeze(1)            # (n,)
    loss = lse - target
    grad = torch.exp(logits - lse[:, None])                        # softmax (n, V)
    if label_smoothing > 0.0:
        smooth = lse - logits.mean(dim=-1)
        loss = (1.0 - label_smoothing) * loss + label_smoothing * smooth
        grad = grad - label_smoothing / logits.shape[-1]
    onehot = torch.zeros_like(grad).scatter_(1, safe[:, None], 1.0 - label_smoothing)
    grad = (grad - onehot) * valid[:, None]
    return (loss * valid).sum(), grad.to(grad_dtype or grad.dtype)


def _ce_target_rows(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float,
                    grad_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """`_ce_chunk` for rows that are all targets, reusing the buffers: the host path's chunk math.

    logits: (n, V), consumed (no caller reads them after); labels: (n,), none ignored. Same loss sum
    and (n, V) gradient as `_ce_chunk`, from one `log_softmax` whose output becomes the gradient.
    """
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    logp = torch.log_softmax(logits, dim=-1)                        # (n, V)
    del logits
    nll = -logp.gather(1, labels[:, None]).squeeze(1)               # (n,)
    if label_smoothing > 0.0:
        loss = ((1.0 - label_smoothing) * nll - label_smoothing * logp.mean(dim=-1)).sum()
    else:
        loss = nll.sum()
    grad = logp.exp_()                                              # softmax, in place
    if label_smoothing > 0.0:
        grad.sub_(label_smoothing / grad.shape[-1])
    grad.scatter_add_(1, labels[:, None], grad.new_full((labels.shape[0], 1), label_smoothing - 1.0))
    return loss, grad.to(grad_dtype)


_COMPILED: dict[tuple, Callable] = {}


def _chunk_fn(logits_dtype: torch.dtype, device: torch.device, ignore_index: int,
              label_smoothing: float, grad_dtype: torch.dtype) -> Callable:
    """The chunk math as f(logits, labels).

    bf16/fp16 logits on CUDA: compiled (one fused pass over the chunk instead of ~6), with
    the constants baked in so the compiler never turns them into run-time float arguments.
    Everything else (fp32/fp64 references, CPU): eager.
    """
    fn = partial(_ce_chunk, ignore_index=ignore_index, label_smoothing=label_smoothing, grad_dtype=grad_dtype)
    if device.type != "cuda" or logits_dtype not in (torch.float16, torch.bfloat16):
        return fn
    key = (ignore_index, label_smoothing, grad_dtype)
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(fn, dynamic=False)
    return _COMPILED[key]


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Sum of token cross-entropies of `hidden @ weight.T + bias`, chunk by chunk over tokens."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                labels: torch.Tensor, ignore_index: int, label_smoothing: float,
                chunk_size: int) -> torch.Tensor:
        # hidden (N, H), weight (V, H), bias (V,) | None, labels (N,)
        rows = None                                                     # (M,) target rows on the host path
        if hidden.device.type == "cpu":
            rows = (labels != ignore_index).nonzero().squeeze(1)
            src_h, src_y = hidden.index_select(0, rows), labels.index_select(0, rows)
            fn = partial(_ce_target_rows, label_smoothing=label_smoothing, grad_dtype=hidden.dtype)
        else:
            src_h, src_y = hidden, labels
            fn = _chunk_fn(torch.promote_types(hidden.dtype, weight.dtype), hidden.device, ignore_index,
                           label_smoothing, hidden.dtype)
        acc = torch.promote_types(hidden.dtype, torch.float32)
        loss = torch.zeros((), dtype=acc, device=hidden.device)
        grad_h = None
        if ctx.needs_input_grad[0]:
            grad_h = torch.empty_like(hidden) if rows is None else torch.zeros_like(hidden)
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) \
            if ctx.needs_input_grad[1] else None
        grad_b = torch.zeros(bias.shape, dtype=acc, device=bias.device) \
            if bias is not None and ctx.needs_input_grad[2] else None
        w_h = weight.to(hidden.dtype) if grad_h is not None else None
        for start in range(0, src_h.shape[0], chunk_size):
            h = src_h[start:start + chunk_size]                         # (n, H)
            part, g = fn(F.linear(h, weight, bias), src_y[start:start + chunk_size])  # g: (n, V), hidden's dtype
            loss += part
            if grad_h is not None and rows is None:
                torch.mm(g, w_h, out=grad_h[start:start + chunk_size])
            elif grad_h is not None:
                grad_h.index_copy_(0, rows[start:start + chunk_size], (g @ w_h).to(grad_h.dtype))
            if grad_w is not None:
                grad_w += (g.t() @ h).to(acc)                           # (V, H)
            if grad_b is not None:
                grad_b += g.to(acc).sum(0)
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.dtypes = (weight.dtype, bias.dtype if bias is not None else None)
        return loss

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        w_dtype, b_dtype = ctx.dtypes
        gh = grad_h * grad_out.to(grad_h.dtype) if grad_h is not None else None
        gw = (grad_w * grad_out).to(w_dtype) if grad_w is not None else None
        gb = (grad_b * grad_out).to(b_dtype) if grad_b is not None else None
        return gh, gw, gb, None, None, None, None


def _torch_backend(hidden, weight, bias, labels, ignore_index, label_smoothing, chunk_size):
    return ChunkedLinearCrossEntropy.apply(hidden, weight, bias, labels, ignore_index,
                                           label_smoothing, chunk_size)


def _liger_backend(hidden, weight, bias, labels, ignore_index, label_smoothing, chunk_size):
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    return liger_fused_linear_cross_entropy(hidden, weight, labels, bias=bias, ignore_index=ignore_index,
                                            label_smoothing=label_smoothing, reduction="sum")


LINEAR_CE_BACKENDS: dict[str, Callable[..., torch.Tensor]] = {
    "torch": _torch_backend,
    "liger": _liger_backend,
}


def liger_available() -> bool:
    """True when the optional `liger-kernel` package is importable."""
    return importlib.util.find_spec("liger_kernel") is not None


CPU_CHUNK_ELEMS = 1 << 25  # 128 MiB of fp32 logits: 512 tokens of a 49k vocabulary


def default_chunk_size(vocab_size: int, budget_elems: int = 1 << 28) -> int:
    """Tokens per chunk so that one chunk's logits hold about `budget_elems` values.

    2**28 values: 512 MiB of bf16 logits plus as much for their gradient (the compiled
    chunk math keeps its fp32 intermediates in registers); 1024 tokens for a 152k vocabulary.
    A CPU run asks for `CPU_CHUNK_ELEMS` instead: its fp32 chunk math holds two chunk-sized
    buffers, and larger chunks were no faster there.
    """
    n = max(1, budget_elems // max(vocab_size, 1))
    return max(64, 1 << (n.bit_length() - 1))  # a power of two keeps matmul shapes friendly


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                         bias: torch.Tensor | None = None, *, ignore_index: int = IGNORE_INDEX,
                         label_smoothing: float = 0.0, chunk_size: int | None = None,
                         backend: str = "auto") -> torch.Tensor:
    """Summed cross-entropy of `hidden @ weight.T (+ bias)` against `labels`, never holding all logits.

    hidden: (..., H); weight: (V, H); labels: (...) with `ignore_index` for non-targets.
    Returns a scalar (fp32, fp64 for fp64 inputs): the sum over target tokens (divide by their count yourself).
    `backend`: "torch" (chunked autograd Function, any device), "liger" (Liger-Kernel's
    Triton kernel, CUDA only), or "auto" (liger when importable on CUDA, else torch).
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    if hidden.shape[:-1] != labels.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} and labels {tuple(labels.shape)} disagree on the token dims")
    if backend == "auto":
        backend = "liger" if hidden.is_cuda and liger_available() else "torch"
    if backend not in LINEAR_CE_BACKENDS:
        raise ValueError(f"unknown linear-CE backend {backend!r}; choose one of {sorted(LINEAR_CE_BACKENDS)} or 'auto'")
    h = hidden.reshape(-1, hidden.shape[-1])                # (N, H)
    y = labels.reshape(-1)                                  # (N,)
    budget = CPU_CHUNK_ELEMS if h.device.type == "cpu" else 1 << 28
    chunk = chunk_size or default_chunk_size(weight.shape[0], budget)
    return LINEAR_CE_BACKENDS[backend](h, weight, bias, y, ignore_index, label_smoothing, chunk)


def shift_labels(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Next-token targets: labels[:, 1:] with `ignore_index` appended, so hidden[t] predicts labels[t+1].

    labels: (B, T) -> (B, T). Packed batches should already carry `ignore_index` at each
    sample's first token so no sample predicts across a boundary.
    """
    pad = torch.full_like(labels[:, :1], ignore_index)
    return torch.cat([labels[:, 1:], pad], dim=1)
