"""Mixed precision for the training loop: which autocast to use and, for fp16, dynamic loss scaling.

``train.precision``:

- ``bf16``: autocast to bfloat16 (same exponent range as float32, so no loss scaling is needed);
- ``fp16``: autocast to float16 with ``torch.amp.GradScaler``: the loss is multiplied by a scale before backward
  so small gradients do not underflow; gradients are unscaled before clipping; a step whose gradients hold
  inf/NaN (the scale was too large) is skipped and the scale halved, and the scale doubles after 2000 clean
  steps. Skipped steps are counted (``skipped_steps`` in metrics.jsonl and summary.json) with the current
  ``loss_scale``. For GPUs without bf16 (T4, V100). Keep the trainable weights in float32
  (``model.dtype: float32``, what ``auto`` picks there): GradScaler refuses float16 gradients.
- ``fp32``: no autocast.
- ``auto``: bf16 on a CUDA GPU that supports it, fp16 on one that does not; on a CPU bf16 where it multiplies
  bf16 natively (AMX, AVX512-BF16: ``tunelab.utils.cpu_bf16``) and fp32 elsewhere; fp32 on Apple ``mps``.

The loop calls four things and stays precision-agnostic: ``autocast()``, ``scale(loss)`` before backward,
``unscale(optimizer)`` before clipping, ``step(optimizer)`` instead of ``optimizer.step()``.
"""

from __future__ import annotations

import contextlib

import torch

from tunelab.utils.cpu_bf16 import cpu_bf16

PRECISIONS = ("auto", "bf16", "fp16", "fp32")


def resolve_precision(requested: str, device: torch.device) -> str:
    """The precision a run uses on `device` (see the module docstring for auto); a ValueError when the device
    cannot run the requested one."""
    if requested not in PRECISIONS:
        raise ValueError(f"train.precision: {requested!r} is not one of {', '.join(PRECISIONS)}")
    cuda = device.type == "cuda"
    if requested == "auto":
        if cuda:
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if device.type == "cpu" and cpu_bf16() else "fp32"
    if requested == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise ValueError("train.precision: bf16 is not supported by this GPU; use fp16 (with loss scaling) or auto")
    return requested


class Precision:
    """Autocast and (fp16) loss scaling for one run; ``skipped_steps`` counts updates skipped on overflow."""

    def __init__(self, requested: str, device: torch.device, init_scale: float = 2.0 ** 16,
                 growth_interval: int = 2000):
        self.name = resolve_precision(requested, device)
        self.device_type = device.type
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.name)
        self.scaler = (torch.amp.GradScaler(device.type, init_scale=init_scale, growth_interval=growth_interval)
                       if self.name == "fp16" else None)
        self.skipped_steps = 0

    def autocast(self):
        """The forward's autocast context (a no-op for fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        """The loss to call backward on: multiplied by the current loss scale under fp16."""
        return self.scaler.scale(loss) if self.scaler is not None else loss

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide the gradients by the scale (before clipping, so max_grad_norm sees the true norm)."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """Take the optimizer step, or skip it when fp16 gradients overflowed; returns whether it stepped."""
        if self.scaler is None:
            optimizer.step()
            return True
        before = self.scaler.get_scale()
        self.scaler.step(optimizer)  # skips the update when unscale_ found inf/NaN gradients
        self.scaler.update()
        skipped = self.scaler.get_scale() < before  # the scale is halved exactly when the step was skipped
        self.skipped_steps += int(skipped)
        return not skipped

    def metrics(self) -> dict:
        """What the loop logs each step: the loss scale and skipped steps so far (fp16 only)."""
        if self.scaler is None:
            return {}
        return {"loss_scale": self.scaler.get_scale(), "skipped_steps": self.skipped_steps}

    def state(self) -> dict:
        """What a checkpoint keeps so a resumed fp16 run continues with the same scale and count."""
        if self.scaler is None:
            return {}
        return {"precision": {"scaler": self.scaler.state_dict(), "skipped_steps": self.skipped_steps}}

    def load(self, saved: dict) -> None:
        """Restore `state()` from a checkpoint's position (absent for runs saved without fp16)."""
        got = saved.get("precision")
        if self.scaler is not None and got:
            self.scaler.load_state_dict(got["scaler"])
            self.skipped_steps = int(got["skipped_steps"])
