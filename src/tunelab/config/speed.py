"""The `train.speed:` section: which of tunelab.kernels' fast paths `tunelab train` uses.

Every switch defaults to `auto`: on where it applies and is exact (loss equal to the plain path within
the tested tolerance), off elsewhere. On CUDA that is every fast path (fused LoRA, compiled decoder
layers, chunked loss, flex_attention document masks for packed rows, batches prepared ahead on pinned
memory, metrics read back every `log_every` steps); on a CPU the chunked loss and fused LoRA (AUTO_EVERYWHERE:
plain torch, faster and leaner there too). The exception is `cuda_graphs`, whose `auto` is off everywhere
(AUTO_OFF). `true` asks for a path wherever it can run; `false` turns it off. The run prints one `speed:` line
saying which paths are on and why any is off (`tunelab.kernels.train.plan_speed`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tunelab.config.base import Section

Switch = bool | Literal["auto"]

# switches whose `auto` is off everywhere, with the reason the `speed:` line gives
AUTO_OFF = {"cuda_graphs": "auto: off, cold-start cost; set true to capture"}
# switches whose `auto` is on for every device (the others: CUDA only)
AUTO_EVERYWHERE = frozenset({"chunked_ce", "fused_lora"})


class SpeedCfg(Section):
    mode: Literal["fast", "lean", "plain"] = Field(
        "fast", description="fast: every applicable fast path (the default). lean: fast plus activation "
        "checkpointing of every decoder layer inside the compiled region (least memory, ~25% slower). "
        "plain: every fast path off (the reference path; for debugging or comparing).")
    chunked_ce: Switch = Field(
        "auto", description="Compute the loss from the final hidden states and lm_head chunk by chunk, never holding "
        "the full (tokens, vocab) logits. Same loss and gradients as the plain path; falls back to it (with a note) "
        "for models or methods it does not support, e.g. prompt/prefix tuning. auto = on everywhere.")
    ce_chunk: int | None = Field(
        None, gt=0, description="Tokens per chunk of the chunked loss; null = about 2**28 logits per chunk "
        "(2**25 on a CPU).")
    ce_backend: Literal["auto", "torch", "liger"] = Field(
        "torch", description="Chunked-loss kernel: torch (any device), liger (Liger-Kernel, CUDA), auto = liger "
        "when installed on CUDA.")
    fused_lora: Switch = Field(
        "auto", description="Run each LoRA linear as one fused autograd node (less activation memory), LoRA dropout "
        "included (a seeded mask drawn inside the fused node). Works with save_every, resume and early stopping "
        "(state-dict keys stay PEFT's). auto = on (CUDA and CPU).")
    compile_layers: Switch = Field(
        "auto", description="torch.compile each decoder layer (fuses norms, rotary, SwiGLU, LoRA); one compiled "
        "layer serves all layers and inductor's cache is reused across runs. auto = on for CUDA; needs Triton.")
    flex_attention: Switch = Field(
        "auto", description="Packed rows attend through flex_attention with a document BlockMask (masked tiles "
        "skipped) instead of SDPA with a materialized block-diagonal mask; rows are padded to data.max_length so "
        "every step has one shape. auto = on for CUDA.")
    prefetch: Switch = Field(
        "auto", description="Collate the next batch in a background thread into pinned memory and copy it with "
        "non_blocking transfers; loss, grad norm and token counts stay on the device and are read back every "
        "train.log_every steps. auto = on for CUDA (a CPU run reads them every step, as before).")
    cuda_graphs: Switch = Field(
        "auto", description="Capture the compiled decoder layers as CUDA graphs (torch.compile mode "
        "reduce-overhead, cudagraph trees) and replay them each step. Needs CUDA, compile_layers and packed rows "
        "padded to one shape (flex_attention); not with lean mode or gradient checkpointing, a 4-bit base, "
        "train.grad_accum > 1 or DDP/FSDP. auto = off: capture adds to every cold start for ~2% per step "
        "(tunelab bench); true = on where it can run.")

    def wants(self, name: str, device_type: str) -> bool:
        """Whether switch `name` asks to be on for a device of `device_type` (before model checks).

        mode plain: nothing; `false`: off; `true`: on; `auto`: on for CUDA (AUTO_EVERYWHERE: on any device;
        AUTO_OFF: nowhere).
        """
        if self.mode == "plain":
            return False
        value = getattr(self, name)
        if value == "auto":
            return name not in AUTO_OFF and (device_type == "cuda" or name in AUTO_EVERYWHERE)
        return bool(value)
