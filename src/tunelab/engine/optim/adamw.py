"""AdamW from torch (Loshchilov & Hutter 2019, arXiv:1711.05101), the default optimizer; fused kernels on CUDA."""

from __future__ import annotations

import torch


def build(groups: list[dict], lr: float, optim, device: torch.device, model) -> torch.optim.Optimizer:
    """torch.optim.AdamW over the parameter groups with the configured betas and eps."""
    return torch.optim.AdamW(groups, lr=lr, betas=optim.betas, eps=optim.eps, fused=device.type == "cuda")
