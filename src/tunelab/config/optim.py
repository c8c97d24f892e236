"""The `optim:` section: optimizer choice, per-group learning rates and regularisers that work with any method."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tunelab.config.base import Section
from tunelab.config.refs import DataPath


class GaloreCfg(Section):
    """GaLore (Zhao et al. 2024, arXiv:2403.03507): Adam moments kept in a low-rank projection of the gradient."""

    rank: int = Field(128, gt=0, description="Rank of the gradient projection.")
    update_interval: int = Field(200, gt=0, description="Recompute the projection (SVD of the gradient) every N steps.")
    scale: float = Field(0.25, gt=0, description="Scale of the projected-back update.")
    target_modules: list[str] = Field(
        ["attn", "mlp"], description="2-d weights whose name contains one of these get projected; the rest use AdamW."
    )


class BadamCfg(Section):
    """BAdam (Luo et al. 2024, arXiv:2404.02827): Adam on one block (decoder layer) at a time."""

    switch_mode: Literal["ascending", "descending", "random"] = Field(
        "ascending", description="Order in which blocks take turns."
    )
    switch_interval: int = Field(50, gt=0, description="Optimizer steps spent on one block before switching.")


class EwcCfg(Section):
    """Elastic weight consolidation (Kirkpatrick et al. 2017, arXiv:1612.00796)."""

    lambda_: float = Field(1.0, ge=0, description="Penalty weight: lambda/2 * sum F_i (theta_i - theta*_i)^2.")
    data: DataPath | None = Field(
        None, description="Reference data (the old task) for the diagonal Fisher; null = the training data."
    )
    samples: int = Field(32, gt=0, description="Samples used to estimate the Fisher.")


class OptimCfg(Section):
    name: Literal["auto", "adamw", "adamw_8bit", "paged_adamw_8bit", "adafactor", "galore_adamw", "badam"] = Field(
        "auto",
        description="Optimizer: auto (paged_adamw_8bit for a 4-bit base on CUDA, as QLoRA; else adamw), "
        "adamw (torch, fused on CUDA), adamw_8bit / paged_adamw_8bit (bitsandbytes), "
        "adafactor (transformers), galore_adamw (low-rank gradient projection), badam (block-coordinate Adam).",
    )
    betas: tuple[float, float] = Field((0.9, 0.999), description="Adam betas.")
    eps: float = Field(1e-8, gt=0, description="Adam epsilon.")
    layer_decay: float | None = Field(
        None, gt=0, le=1, description="Layer-wise LR decay: layer i of L trains at lr * decay^(L - i); "
        "embeddings at decay^(L + 1), the head at lr."
    )
    head_lr_scale: float = Field(1.0, gt=0, description="Learning-rate multiplier for the output head.")
    embed_lr_scale: float = Field(1.0, gt=0, description="Learning-rate multiplier for the input embeddings.")
    galore: GaloreCfg = Field(default_factory=GaloreCfg, description="Settings used when name = galore_adamw.")
    badam: BadamCfg = Field(default_factory=BadamCfg, description="Settings used when name = badam.")
    ewc: EwcCfg | None = Field(None, description="EWC penalty towards the starting weights; null = off.")
