"""Optimizer and learning-rate schedule."""

from __future__ import annotations

import math

import torch


def param_groups(model, weight_decay: float) -> list[dict]:
    """Two AdamW groups: matrices decay, norms/biases/1-d tensors do not (as nanoGPT and most LLM recipes)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 and "norm" not in name.lower() else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(model, lr: float, weight_decay: float, device: torch.device) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters (the fused kernel on CUDA)."""
    groups = param_groups(model, weight_decay)
    if not groups:
        raise ValueError("the method left no parameter trainable; check method.name and its options")
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8, fused=device.type == "cuda")


def lr_lambda(kind: str, total_steps: int, warmup_steps: int):
    """Multiplier of the peak LR at a step: linear warmup, then cosine/linear decay to 0 or constant."""

    def f(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if kind == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        progress = min(max(progress, 0.0), 1.0)
        if kind == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


def build_scheduler(optimizer, kind: str, total_steps: int, warmup_ratio: float):
    """A LambdaLR implementing warmup + decay; its state is saved in checkpoints."""
    warmup = int(round(total_steps * warmup_ratio))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(kind, total_steps, warmup))
