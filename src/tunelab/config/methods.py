"""The `method:` section: one config class per way of choosing what trains, discriminated by `name`."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field

from tunelab.config.base import Section


class FullCfg(Section):
    """Train every weight."""

    name: Literal["full"] = "full"


class LoraCfg(Section):
    """Low-rank adapters on linear layers (Hu et al. 2021), through PEFT."""

    name: Literal["lora"] = "lora"
    r: int = Field(16, gt=0, description="Rank of the update; trainable parameters grow linearly with it.")
    alpha: float = Field(32, gt=0, description="Scaling numerator: the update is scaled by alpha / r.")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the adapter input.")
    target_modules: Union[Literal["all-linear", "attention", "mlp"], list[str]] = Field(
        "all-linear",
        description="Which linear layers get adapters: all-linear, attention, mlp, or a list of module names.",
    )


MethodCfg = Annotated[Union[FullCfg, LoraCfg], Field(discriminator="name")]
