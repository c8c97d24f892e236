"""How a run spreads over several processes (torchrun): DDP or FSDP2, and their options.

These settings only take effect when the run is launched with more than one process
(`tunelab train CONFIG --nproc N` or `torchrun --nproc-per-node N -m tunelab train CONFIG`);
a single-process run ignores them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tunelab.config.base import Section


class ParallelCfg(Section):
    strategy: Literal["none", "ddp", "fsdp"] = Field(
        "ddp",
        description="With several processes: ddp = a full replica per process, gradients all-reduced; "
        "fsdp = FSDP2 (fully_shard), parameters, gradients and optimizer state sharded over processes; "
        "none = refuse to run with more than one process.",
    )
    cpu_offload: bool = Field(
        False, description="fsdp: keep sharded parameters, gradients and optimizer state in CPU memory "
        "(CPUOffloadPolicy); slower, for models whose optimizer state does not fit on the GPUs.")
    reshard_after_forward: bool = Field(
        True, description="fsdp: free gathered parameters after each layer's forward (ZeRO-3); "
        "false keeps them until backward (ZeRO-2 like: faster, more memory).")
    mixed_precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="fsdp: dtype of gathered parameters for compute (MixedPrecisionPolicy); gradients "
        "are reduced in float32. auto = bf16 on a GPU that supports it, else fp32.")
    backend: Literal["auto", "nccl", "gloo"] = Field(
        "auto", description="Process-group backend; auto = nccl on CUDA, gloo on CPU.")
    timeout_minutes: int = Field(
        30, gt=0, description="How long a collective waits for the slowest process before the run fails.")
    find_unused_parameters: bool = Field(
        False, description="ddp: tolerate parameters that get no gradient in a step (slower; needed by some "
        "models with conditional branches).")


__all__ = ["ParallelCfg"]
