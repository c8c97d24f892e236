"""Adafactor (Shazeer & Stern 2018, arXiv:1804.04235) from transformers, with our learning-rate schedule."""

from __future__ import annotations

import torch


def build(groups: list[dict], lr: float, optim, device: torch.device, model) -> torch.optim.Optimizer:
    """transformers' Adafactor with an explicit lr (the schedule is ours): no relative step, no warmup init."""
    from transformers.optimization import Adafactor

    return Adafactor(groups, lr=lr, scale_parameter=False, relative_step=False, warmup_init=False)
