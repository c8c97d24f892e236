"""Fused LoRA linear: `y = x W^T + b + s * (x A^T) B^T` in one autograd node.

PEFT's `lora.Linear.forward` runs the base layer, then (for fp32 adapter weights on a
bf16 model) casts the input to fp32, applies dropout (an Identity copy when p = 0),
and runs two more matmuls; autograd keeps the fp32 copy of every input for the
backward pass. Here the adapter weights are cast to the input's dtype instead (they are
rank x d, so the cast is tiny), the low-rank product is added in place into the base
output, and the backward pass is written out, saving only `x` and the (N, r) product.
LoRA: Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", arXiv:2106.09685.

The swap goes through public module APIs: `fuse_lora(model)` replaces each eligible
`peft.tuners.lora.Linear` with a `FusedLoraLinear` that holds the original module (and
so the same parameters), and `unfuse_lora(model)` puts the originals back, e.g. before
`save_pretrained` so adapter files keep PEFT's key names. Whenever the fused path does
not apply (DoRA, merged or disabled adapters, several active adapters) the
wrapper calls PEFT's own forward. LoRA dropout runs inside the fused node (`dropout_mask`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn


MASK_LEVELS = 1 << 15  # a CPU mask's drop probability is a multiple of 1/32768


def dropout_mask(x: torch.Tensor, p: float) -> torch.Tensor:
    """Keep-mask of inverted dropout: x's shape and dtype, each value 0 (dropped) or 1/(1 - p).

    On a GPU it is `bernoulli_`, as `torch.nn.functional.dropout` draws it. On a CPU, where drawing one
    float per element is what dropout costs (a (4096, 576) fp32 mask: 24.6 ms by `bernoulli_`, 8-9 ms
    here, on 2 cores), each 31-bit draw of the global generator gives two independent 15-bit uniforms:
    the drop probability is `p` rounded to a multiple of 1/32768 (0.05 -> 0.04999) and kept values are
    scaled by that rounded rate, so the mask's mean is exactly 1. Seeded runs repeat their masks.
    """
    if x.device.type != "cpu":
        return torch.empty_like(x).bernoulli_(1.0 - p).div_(1.0 - p)
    drop = round(p * MASK_LEVELS)
    if drop >= MASK_LEVELS:
        return torch.zeros_like(x)
    n = x.numel()
    bits = torch.empty((n + 1) // 2, dtype=torch.int32).random_()         # [0, 2**31): bit 31 is 0
    uniform = bits.view(torch.int16)[:n].bitwise_and_(MASK_LEVELS - 1)     # bits 0-14 and 16-30 of each draw
    keep, zero = (torch.tensor(v, dtype=x.dtype) for v in (MASK_LEVELS / (MASK_LEVELS - drop), 0.0))
    return torch.where(uniform.view(x.shape) >= drop, keep, zero)


class LoraLinearFunction(torch.autograd.Function):
    """Forward and backward of a LoRA linear with a frozen base weight (base grads only if asked).

    With dropout p > 0 the low-rank branch sees `dropout(x)` (inverted dropout, as PEFT's
    `lora_dropout`); the base branch sees `x`. The (N, in) mask is drawn inside the node and kept
    for the backward pass instead of a second (N, in) copy of the input.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                lora_a: torch.Tensor, lora_b: torch.Tensor, scaling: float, dropout: float = 0.0) -> torch.Tensor:
        # x (..., in), weight (out, in), bias (out,), lora_a (r, in), lora_b (out, r)
        x2 = x.reshape(-1, x.shape[-1])                       # (N, in)
        a = lora_a.to(x.dtype)
        b = lora_b.to(x.dtype)
        mask = dropout_mask(x2, dropout) if dropout > 0 else None   # (N, in)
        xd = x2 * mask if mask is not None else x2
        xa = xd @ a.t()                                       # (N, r)
        y = F.linear(x2, weight, bias)                        # (N, out)
        y.addmm_(xa, b.t(), alpha=scaling)
        ctx.needs_base_grad = ctx.needs_input_grad[1]
        # saved: the input the adapter saw (dropped out) and, for the base weight's gradient only, x itself
        ctx.save_for_backward(xd, x2 if ctx.needs_base_grad and mask is not None else None, mask, weight, a, b, xa)
        ctx.scaling = scaling
        ctx.has_bias = bias is not None
        ctx.dtypes = (lora_a.dtype, lora_b.dtype, weight.dtype, bias.dtype if bias is not None else None)
        return y.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        xd, x_base, mask, weight, a, b, xa = ctx.saved_tensors
        x_base = xd if x_base is None else x_base
        s = ctx.scaling
        a_dtype, b_dtype, w_dtype, bias_dtype = ctx.dtypes
        dy = grad_y.reshape(-1, grad_y.shape[-1]).to(xd.dtype)   # (N, out)
        dxa = (dy @ b).mul_(s)                                    # (N, r)
        dx = da = db = dw = dbias = None
        if ctx.needs_input_grad[0]:
            dx = dy @ weight.to(xd.dtype)                         # (N, in)
            if mask is None:
                dx.addmm_(dxa, a)
            else:
                dx.add_((dxa @ a).mul_(mask))                     # the adapter branch saw dropout(x)
            dx = dx.view(*grad_y.shape[:-1], xd.shape[-1])
        if ctx.needs_input_grad[1]:
            dw = (dy.t() @ x_base).to(w_dtype)                    # (out, in)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            dbias = dy.sum(0).to(bias_dtype)
        if ctx.needs_input_grad[3]:
            da = (dxa.t() @ xd).to(a_dtype)                       # (r, in)
        if ctx.needs_input_grad[4]:
            db = (dy.t() @ xa).mul_(s).to(b_dtype)                # (out, r)
        return dx, dw, dbias, da, db, None, None


@torch.library.custom_op("tunelab::linear_plus_lowrank", mutates_args=())
def linear_plus_lowrank(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, xa: torch.Tensor,
                        lora_b: torch.Tensor, scaling: float) -> torch.Tensor:
    """`x @ weight.T + bias + scaling * xa @ lora_b.T` for a frozen `weight`, the low-rank product added in place.

    x: (N, in); weight: (out, in); xa: (N, r); lora_b: (out, r), all in one dtype. One operator to the
    compiler: written as `addmm(linear(x), xa, lora_b.T)` in a compiled graph, the (N, out) base output is
    first copied into addmm's result (a device-to-device copy of every LoRA linear's output, 4-5% of a
    1.5B step on an H100); here the second product accumulates into the first's output instead.
    """
    return F.linear(x, weight, bias).addmm_(xa, lora_b.t(), alpha=scaling)


@linear_plus_lowrank.register_fake
def _linear_plus_lowrank_fake(x, weight, bias, xa, lora_b, scaling):
    return x.new_empty((x.shape[0], weight.shape[0]))


def _linear_plus_lowrank_setup(ctx, inputs, output) -> None:
    _, weight, _, xa, lora_b, scaling = inputs
    ctx.save_for_backward(weight, xa, lora_b)
    ctx.scaling = scaling


def _linear_plus_lowrank_backward(ctx, dy: torch.Tensor):
    weight, xa, lora_b = ctx.saved_tensors
    s = ctx.scaling
    dx = dy @ weight if ctx.needs_input_grad[0] else None           # (N, in)
    dxa = (dy @ lora_b) * s if ctx.needs_input_grad[3] else None     # (N, r)
    db = (dy.t() @ xa) * s if ctx.needs_input_grad[4] else None      # (out, r)
    return dx, None, None, dxa, db, None


linear_plus_lowrank.register_autograd(_linear_plus_lowrank_backward, setup_context=_linear_plus_lowrank_setup)


def lora_linear_ops(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                    lora_a: torch.Tensor, lora_b: torch.Tensor, scaling: float, dropout: float = 0.0) -> torch.Tensor:
    """Same result as `lora_linear` from differentiable ops the compiler can see.

    Used inside torch.compile: the compiler then sees the whole layer and its partitioner
    chooses what to save (e.g. keeps gate/up and recomputes the SwiGLU product instead of
    also storing it as down_proj's input), which a hand-written backward would hide. Dropout
    here is `F.dropout` (the compiler's own RNG: same distribution, other draws). A frozen base
    (LoRA's case) goes through `linear_plus_lowrank`, which adds the low-rank product into the base
    output in place instead of copying it first.
    """
    x2 = x.reshape(-1, x.shape[-1])                                        # (N, in)
    xd = F.dropout(x2, dropout, training=True) if dropout > 0 else x2
    xa = xd @ lora_a.to(x.dtype).t()                                       # (N, r)
    if weight.requires_grad or (bias is not None and bias.requires_grad):  # base weights train too: plain ops
        y = torch.addmm(F.linear(x2, weight, bias), xa, lora_b.to(x.dtype).t(), alpha=scaling)
    else:
        # xa came from a matmul, so it has the dtype autocast gives products (x's own without autocast); an
        # operator of our own is not cast by autocast, so its operands are cast here as autocast casts a linear's
        args = tuple(t.to(xa.dtype) if t is not None else None for t in (x2, weight, bias, xa, lora_b))
        y = linear_plus_lowrank(*args, scaling)
    return y.view(*x.shape[:-1], weight.shape[0])


def lora_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                lora_a: torch.Tensor, lora_b: torch.Tensor, scaling: float, dropout: float = 0.0) -> torch.Tensor:
    """`x @ weight.T + bias + scaling * (dropout(x) @ lora_a.T) @ lora_b.T`, computed in x's dtype.

    x: (..., in); weight: (out, in); lora_a: (r, in); lora_b: (out, r). Eager: one autograd
    node with a hand-written backward (in-place add, only x and the (N, r) product saved).
    Under torch.compile: `lora_linear_ops`, so the compiler can fuse and re-plan saving.
    `dropout` is LoRA's dropout probability on the adapter's input (0 in eval mode).
    Under autocast the node computes in the autocast dtype: x, weight and bias are cast as autocast casts a
    linear's operands (differentiably, so a trained fp32 base still gets fp32 gradients) and the node runs
    with autocast off, so its backward multiplies in that dtype too.
    """
    if torch.compiler.is_compiling():
        return lora_linear_ops(x, weight, bias, lora_a, lora_b, scaling, dropout)
    device = x.device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        x, weight = x.to(dtype), weight.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
        with torch.autocast(device, enabled=False):
            return LoraLinearFunction.apply(x, weight, bias, lora_a, lora_b, scaling, dropout)
    return LoraLinearFunction.apply(x, weight, bias, lora_a, lora_b, scaling, dropout)


class TransparentWrapper(nn.Module):
    """A module wrapping `self.<attr>` whose state dict reads and loads as the wrapped module's own.

    Wrappers swapped in for the length of training (fused LoRA, checkpointed layers) would otherwise
    add `.<attr>.` to every key, and a checkpoint saved mid-run (save_every, early stopping's best
    weights) would not match PEFT's names; public state-dict hooks strip and restore that segment.
    """

    wrapped_attr = "inner"

    def __init__(self):
        super().__init__()
        self.register_state_dict_post_hook(_strip_wrapper_keys)
        self.register_load_state_dict_pre_hook(_add_wrapper_keys)


@contextmanager
def unwrapped(model: nn.Module) -> Iterator[None]:
    """The model's own modules in place of every `TransparentWrapper` for the block; the same wrappers after.

    Saving and loading through PEFT (mid-run checkpoints, early stopping's best weights, resume) finds
    adapter layers by module path, which a wrapper changes. Putting the very same wrapper objects back
    afterwards keeps compiled layers valid (no recompilation).
    """
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, TransparentWrapper)]
    for name, wrapper in reversed(found):  # innermost first: each path is still valid when it is replaced
        model.set_submodule(name, getattr(wrapper, wrapper.wrapped_attr))
    try:
        yield
    finally:
        for name, wrapper in found:  # outermost first: the inner paths run through the outer wrappers again
            model.set_submodule(name, wrapper)


def _strip_wrapper_keys(module: TransparentWrapper, state_dict: dict, prefix: str, local_metadata) -> None:
    inner = prefix + module.wrapped_attr + "."
    for key in [k for k in state_dict if k.startswith(inner)]:
        state_dict[prefix + key[len(inner):]] = state_dict.pop(key)


def _add_wrapper_keys(module: TransparentWrapper, state_dict: dict, prefix: str, *args) -> None:
    inner = prefix + module.wrapped_attr + "."
    for key in [k for k in state_dict if k.startswith(prefix) and not k.startswith(inner)]:
        state_dict[inner + key[len(prefix):]] = state_dict.pop(key)


class FusedLoraLinear(TransparentWrapper):
    """Drop-in for a `peft.tuners.lora.Linear`: same parameters and state-dict keys, fused forward when it applies."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def _fused_args(self) -> tuple | None:
        """(base, A, B, scaling, dropout p) when the fused path computes what PEFT would, else None."""
        inner = self.inner
        if getattr(inner, "disable_adapters", False) or getattr(inner, "merged", False):
            return None
        active = [n for n in inner.active_adapters if n in inner.lora_A]
        if len(active) != 1:
            return None
        name = active[0]
        drop = inner.lora_dropout[name]
        if inner.use_dora.get(name, False) or not isinstance(drop, (nn.Identity, nn.Dropout)):
            return None
        base = inner.get_base_layer()
        if not isinstance(base, nn.Linear):
            return None
        p = drop.p if isinstance(drop, nn.Dropout) and drop.training else 0.0
        return base, inner.lora_A[name].weight, inner.lora_B[name].weight, inner.scaling[name], p

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        fused = None if args or kwargs else self._fused_args()
        if fused is None:
            return self.inner(x, *args, **kwargs)
        base, a, b, s, p = fused
        return lora_linear(x, base.weight, base.bias, a, b, s, p)


def _is_peft_lora_linear(module: nn.Module) -> bool:
    """A PEFT LoRA linear whose base computes `F.linear` (the fused node's base product): not a quantized base
    such as bitsandbytes' Linear4bit, which subclasses nn.Linear with a forward of its own (on a CPU, PEFT
    wraps it in its plain `lora.Linear`)."""
    from peft.tuners.lora import Linear as PeftLoraLinear

    if not isinstance(module, PeftLoraLinear):
        return False
    base = module.get_base_layer()
    return isinstance(base, nn.Linear) and type(base).forward is nn.Linear.forward


def fuse_lora(model: nn.Module) -> int:
    """Wrap every `peft.tuners.lora.Linear` in `model` with `FusedLoraLinear`; returns how many.

    Parameters are shared, not copied, so optimizers built before or after see the same tensors.
    """
    targets = [name for name, m in model.named_modules() if _is_peft_lora_linear(m)]
    for name in targets:
        model.set_submodule(name, FusedLoraLinear(model.get_submodule(name)))
    return len(targets)


def unfuse_lora(model: nn.Module) -> int:
    """Undo `fuse_lora`: put the original PEFT modules back (do this before saving adapters)."""
    targets = [name for name, m in model.named_modules() if isinstance(m, FusedLoraLinear)]
    for name in targets:
        model.set_submodule(name, model.get_submodule(name).inner)
    return len(targets)
