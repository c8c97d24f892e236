"""Tensor helpers shared by the learning stages: label log-probs, masked reductions, KL estimators.

Conventions used by every stage module:

- ``labels`` are aligned with ``input_ids`` (the Hugging Face convention) and hold ``-100`` where a
  position is not a target (prompt, padding). Helpers that take logits and labels shift by one
  internally: the logits at position ``t`` predict the label at ``t + 1``.
- Per-token tensors are ``(B, T)`` with a ``mask`` of the same shape (1 = counts, 0 = ignored).
- Everything here is a pure function of tensors: no model, no config, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
from torch import Tensor

from tunelab.data.templates import IGNORE_INDEX  # -100: label value of a position that is not a target


def token_logps(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Log-probability of each next-token label, and the mask of real targets.

    Shifts by one (logits at ``t`` score the label at ``t + 1``) and gathers ``log softmax`` at the label
    without building a full ``(B, T, V)`` log-softmax copy: ``logit[label] - logsumexp(logits)``.

    Args:
        logits: ``(B, T, V)`` raw model outputs.
        labels: ``(B, T)`` token ids aligned with the inputs, ``-100`` where not a target.

    Returns:
        ``(logps, mask)``, both ``(B, T - 1)``; ``logps`` is 0 where ``mask`` is 0.
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree on (batch, length); "
            "pass labels aligned with input_ids (same (B, T) as the logits)"
        )
    logits = logits[:, :-1, :]  # (B, T-1, V)
    labels = labels[:, 1:]  # (B, T-1)
    mask = labels != IGNORE_INDEX  # (B, T-1)
    safe = labels.masked_fill(~mask, 0)  # any valid id; the value is masked out below
    dtype = torch.promote_types(logits.dtype, torch.float32)  # bf16/fp16 logits are scored in fp32
    picked = logits.gather(-1, safe.unsqueeze(-1)).squeeze(-1).to(dtype)  # (B, T-1)
    logps = picked - torch.logsumexp(logits.to(dtype), dim=-1)  # (B, T-1)
    return logps * mask, mask.to(logps.dtype)


def sequence_logps(logits: Tensor, labels: Tensor, average: bool = False) -> Tensor:
    """Summed (or per-token averaged) log-probability of each sequence's labels.

    This is ``log pi(y | x)`` for the completion ``y`` marked by the labels: the quantity every preference
    loss compares. ``average=True`` divides by the number of target tokens (SimPO, ORPO and IPO use the
    length-normalized form). A row without any target gives 0 for the sum and 0 for the average.

    Args:
        logits: ``(B, T, V)``.
        labels: ``(B, T)`` aligned with the inputs, ``-100`` where not a target.
        average: divide by the number of target tokens per sequence.

    Returns:
        ``(B,)``, float32 (or float64 for float64 logits).
    """
    logps, mask = token_logps(logits, labels)  # (B, T-1) each
    total = logps.sum(-1)  # (B,)
    if average:
        return total / mask.sum(-1).clamp(min=1.0)
    return total


def target_counts(labels: Tensor) -> Tensor:
    """Number of target tokens per sequence (``labels != -100`` after the one-token shift); ``(B, T) -> (B,)``."""
    return (labels[:, 1:] != IGNORE_INDEX).sum(-1)


def masked_sum(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of ``values`` where ``mask`` is set (over ``dim``, or everything when ``dim`` is None)."""
    masked = values * mask
    return masked.sum() if dim is None else masked.sum(dim)


def masked_mean(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``values`` where ``mask`` is set; an empty mask gives 0 instead of NaN."""
    return masked_sum(values, mask, dim) / masked_sum(torch.ones_like(values), mask, dim).clamp(min=1.0)


def masked_whiten(values: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Normalize ``values`` to zero mean and unit variance over the masked entries (PPO advantage whitening).

    Uses the biased variance over all masked entries of the batch; ``shift_mean=False`` keeps the mean
    (used for rewards, where the sign carries meaning). Masked-out entries are returned as 0.
    """
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    whitened = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


# Per-token estimators of KL(pi || pi_ref) from log-probs of tokens sampled from pi (Schulman, "Approximating
# KL Divergence", 2020). With log_ratio = log pi - log pi_ref:
#   k1 = log_ratio                          unbiased, high variance, can be negative per token
#   k2 = log_ratio**2 / 2                   biased, low variance, always >= 0
#   k3 = exp(-log_ratio) - 1 + log_ratio    unbiased, low variance, always >= 0 (the GRPO choice)
KlEstimator = Callable[[Tensor, Tensor], Tensor]


def kl_k1(logps: Tensor, ref_logps: Tensor) -> Tensor:
    """k1 estimator ``log pi - log pi_ref`` per token; shapes ``(B, T) -> (B, T)``."""
    return logps - ref_logps


def kl_k2(logps: Tensor, ref_logps: Tensor) -> Tensor:
    """k2 estimator ``(log pi - log pi_ref)^2 / 2`` per token."""
    return 0.5 * (logps - ref_logps) ** 2


def kl_k3(logps: Tensor, ref_logps: Tensor) -> Tensor:
    """k3 estimator ``exp(log pi_ref - log pi) - (log pi_ref - log pi) - 1`` per token (DeepSeekMath, Eq. 4)."""
    delta = ref_logps - logps
    return torch.exp(delta) - delta - 1


KL_ESTIMATORS: dict[str, KlEstimator] = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


T = TypeVar("T")


def pick(registry: dict[str, T], name: str, what: str) -> T:
    """Look ``name`` up in a registry, or raise a ValueError listing the valid choices."""
    try:
        return registry[name]
    except KeyError:
        raise ValueError(f"unknown {what} {name!r}; choose one of: {', '.join(sorted(registry))}") from None


def check_same_shape(**tensors: Tensor | None) -> None:
    """Raise a ValueError naming the arguments when the given (non-None) tensors differ in shape."""
    shapes = {name: tuple(t.shape) for name, t in tensors.items() if t is not None}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(f"shape mismatch: {listed}; these tensors must have the same shape")
