"""The frozen reference model of the preference stages: the policy as it was before this stage.

For adapter methods (LoRA and other PEFT methods) the reference is the same weights with the adapters
switched off (`PeftModel.disable_adapter()`), so no second copy is held in memory. For full fine-tuning it
is a frozen copy made before the first update, unless the reference log-probs are precomputed, in which
case the model itself is used once before training and no copy is kept.
"""

from __future__ import annotations

import contextlib
import copy

import torch


class Reference:
    """Computes reference-model outputs for a batch without tracking gradients."""

    def __init__(self, model: torch.nn.Module, copy_weights: bool = True):
        self.shares_weights = hasattr(model, "disable_adapter")
        if self.shares_weights or not copy_weights:
            self.model, self._frozen = model, None
        else:
            self._frozen = copy.deepcopy(model).eval().requires_grad_(False)
            self.model = self._frozen

    @contextlib.contextmanager
    def active(self):
        """Context in which `self.model` behaves as the reference model."""
        with torch.no_grad():
            if self.shares_weights:
                with self.model.disable_adapter():
                    yield self.model
            else:
                yield self.model

    def logits(self, batch: dict) -> torch.Tensor:
        """Reference logits ``(B, T, V)`` of a padded batch."""
        extra = {"position_ids": batch["position_ids"]} if "position_ids" in batch else {}
        with self.active() as model:
            return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False,
                         **extra).logits
