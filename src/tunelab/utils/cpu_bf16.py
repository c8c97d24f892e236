"""Whether `auto` precision means bfloat16 on this CPU.

CPUs with bf16 matrix units (Intel AMX, or AVX512-BF16 on Cooper Lake / Zen 4 and later) multiply bf16 matrices
natively: on this project's 2-core Xeon with AMX a (4096 x 576) @ (576 x 1536) product took 7.9 ms in bf16 and
67 ms in fp32, and a SmolLM2-135M LoRA run's steady rate went from 184 to 261 tokens/s (docs/speed.md, "On a
CPU"). Elsewhere bf16 is emulated and slower than fp32. So `model.dtype: auto` and `train.precision: auto`
pick bfloat16 on such CPUs, as they do on a GPU that has it, and float32 on the others. `TUNELAB_CPU_BF16=0` keeps float32 on any CPU (e.g. to compare with
a float32 run elsewhere), `=1` asks for bfloat16 on any CPU; explicit `model.dtype` / `train.precision` values
always win.
"""

from __future__ import annotations

import os

import torch

ENV = "TUNELAB_CPU_BF16"
_ON, _OFF = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def native_bf16_matmul() -> bool:
    """Whether this CPU has bf16 matrix instructions (AMX tiles usable by this process, or AVX512-BF16)."""
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    try:
        return any(check() for check in checks if check is not None)
    except RuntimeError:  # a torch build that cannot query the CPU
        return False


def cpu_bf16() -> bool:
    """Whether `auto` picks bfloat16 on this CPU (see the module doc); a ValueError names a bad TUNELAB_CPU_BF16."""
    setting = os.environ.get(ENV, "auto").strip().lower()
    if setting in _ON:
        return True
    if setting in _OFF:
        return False
    if setting not in ("", "auto"):
        raise ValueError(f"{ENV}={os.environ[ENV]!r}: use 1 (bfloat16 on any CPU), 0 (float32) or auto "
                         "(bfloat16 where the CPU multiplies it natively)")
    return native_bf16_matmul()


def keep_trainable_fp32(model: torch.nn.Module) -> int:
    """Give `model`'s trainable bfloat16 parameters float32 storage (the optimizer's master weights); frozen ones
    stay bfloat16. Returns how many were upcast.

    bf16 keeps 8 bits of mantissa, so an update smaller than about 1/256 of a weight is rounded away: a full or
    freeze fine-tune stored in bf16 loses most small-learning-rate steps. Under bf16 autocast the products still
    run in bf16, so this costs memory for the trained part only. LoRA adapters are float32 already (PEFT).
    """
    upcast = 0
    for p in model.parameters():
        if p.requires_grad and p.dtype == torch.bfloat16:
            p.data = p.data.float()
            upcast += 1
    return upcast
