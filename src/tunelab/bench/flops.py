"""Model FLOPs per token, in the convention of the HF+PEFT peer benchmark (so ratios are like for like).

forward  = 2 * N + 4 * L * S * h   (N: all base-model parameters, embeddings included and
           counted once when tied; 4*L*S*h: attention scores and weighted sum, the causal
           half-saving ignored, as in PaLM's MFU, Chowdhery et al. 2022, arXiv:2204.02311)
(Q)LoRA  = 2 * forward             (backward computes activation grads only; the adapters' own
                                    FLOPs are negligible and not counted)
full     = 3 * forward             (= 6N + attention: activation grads + weight grads)
+ checkpointing adds one more forward (the recompute), as the peer script counts it; when
  only some layers are checkpointed, that fraction of a forward.

MFU = tokens/s * FLOPs/token / peak; peak defaults to 989 TFLOP/s (H100 SXM dense bf16) and
is read from the PEAK_TFLOPS environment variable like the peer script does.
"""

from __future__ import annotations

import os

PASSES: dict[str, int] = {"lora": 2, "qlora": 2, "full": 3}


def flops_per_token(n_params: int, n_layers: int, hidden: int, seq: int, method: str,
                    recompute: float = 0.0) -> float:
    """Training FLOPs per token (see module docstring); `recompute`: fraction of layers checkpointed."""
    if method not in PASSES:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(PASSES)}")
    fwd = 2 * n_params + 4 * n_layers * seq * hidden
    return fwd * PASSES[method] + fwd * float(recompute)


def peak_tflops() -> float:
    """Peak dense bf16 TFLOP/s used for MFU (env PEAK_TFLOPS, default 989 for H100 SXM)."""
    return float(os.environ.get("PEAK_TFLOPS", "989"))


def mfu(tok_s: float, per_token: float, peak: float | None = None) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over the peak."""
    return tok_s * per_token / ((peak or peak_tflops()) * 1e12)
