"""The `optim:` section: optimizer choice and regularisers that work with any method."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tunelab.config.base import Section


class OptimCfg(Section):
    name: Literal["adamw"] = Field("adamw", description="Optimizer; adamw = torch AdamW (fused on CUDA).")
