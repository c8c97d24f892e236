"""The `train.speed:` section: which of tunelab.kernels' fast paths `tunelab train` uses.

Only `chunked_ce` is on by default: it computes the same loss and gradients as the plain
path (up to float summation order) and works on every device. The others change how the
model runs and apply on CUDA only; on other devices they are skipped with a note.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tunelab.config.base import Section


class SpeedCfg(Section):
    chunked_ce: bool = Field(
        True, description="Compute the loss from the final hidden states and lm_head chunk by chunk, never holding "
        "the full (tokens, vocab) logits. Same loss and gradients as the plain path; falls back to it (with a note) "
        "for models or methods it does not support, e.g. prompt/prefix tuning.")
    ce_chunk: int | None = Field(
        None, gt=0, description="Tokens per chunk of the chunked loss; null = about 2**28 logits per chunk.")
    ce_backend: Literal["auto", "torch", "liger"] = Field(
        "torch", description="Chunked-loss kernel: torch (any device), liger (Liger-Kernel, CUDA), auto = liger "
        "when installed on CUDA.")
    fused_lora: bool = Field(
        False, description="CUDA only: run each LoRA linear as one fused autograd node (less activation memory). "
        "Skipped when checkpoints are saved or resumed mid-run (train.save_every, early stopping, resume).")
    compile_layers: bool = Field(
        False, description="CUDA only: torch.compile each decoder layer (fuses norms, rotary, SwiGLU); the first "
        "steps are slower while it compiles.")
