"""Per-layer regions of a transformers decoder: torch.compile each layer, checkpoint each layer.

Compiling one decoder layer (all layers share its code, so it is compiled once) fuses
RMSNorm, rotary embedding, SwiGLU and residual adds into a few kernels and lets the
partitioner recompute cheap elementwise results instead of storing them. Checkpointing
keeps only each layer's input and recomputes the layer in the backward pass
(Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost", arXiv:1604.06174).
Both go through public APIs: `nn.Module.compile` and `torch.utils.checkpoint`.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from tunelab.kernels.lora import TransparentWrapper


class CheckpointedLayer(TransparentWrapper):
    """Runs `layer` under non-reentrant activation checkpointing while training; state-dict keys stay the layer's.

    `active=False` makes it a plain pass-through: `tunelab train` wraps every layer so that compiling the
    wrappers leaves the model's own layers uncompiled once they are unwrapped after training.
    """

    wrapped_attr = "layer"

    def __init__(self, layer: nn.Module, active: bool = True):
        super().__init__()
        self.layer = layer
        self.active = active

    def forward(self, *args, **kwargs):
        if self.active and self.training and torch.is_grad_enabled():
            return checkpoint(self.layer, *args, use_reentrant=False, **kwargs)
        return self.layer(*args, **kwargs)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The `nn.ModuleList` of decoder blocks of a transformers causal LM (PEFT-wrapped or not)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and name.endswith("layers") and len(module) > 0:
            return module
    raise ValueError(f"{type(model).__name__} has no `layers` ModuleList; cannot find its decoder blocks")


def compile_layers(model: nn.Module, **compile_kwargs) -> int:
    """`nn.Module.compile` every decoder layer in place (dynamic=False unless given); returns the count.

    A `CheckpointedLayer` is compiled as a whole, so the checkpoint sits inside the compiled
    region (the compiler plans the recompute); a compiled layer inside an eager checkpoint
    can recompute a different set of saved tensors and fail the checkpoint's check.
    """
    compile_kwargs.setdefault("dynamic", False)
    layers = decoder_layers(model)
    for layer in layers:
        layer.compile(**compile_kwargs)
    return len(layers)


def checkpoint_layers(model: nn.Module, every: int = 1, wrap_all: bool = False) -> int:
    """Wrap every `every`-th decoder layer (0, every, 2*every, ...) in `CheckpointedLayer`; returns how many.

    `every=1` is full checkpointing; larger values trade less memory saving for less recompute.
    `wrap_all` also wraps the other layers, in inactive (pass-through) wrappers.
    """
    if every < 1:
        raise ValueError(f"every must be >= 1 (got {every})")
    layers = decoder_layers(model)
    count = 0
    for i, layer in enumerate(layers):
        if isinstance(layer, CheckpointedLayer):
            continue
        if i % every == 0 or wrap_all:
            layers[i] = CheckpointedLayer(layer, active=i % every == 0)
            count += i % every == 0
    return count


def wrap_layers(model: nn.Module) -> int:
    """Wrap every decoder layer in an inactive (pass-through) `CheckpointedLayer`; returns how many.

    Compiling the wrappers instead of the layers leaves the model's own layers uncompiled once
    `uncheckpoint_layers` puts them back. All wrappers alike, so one compiled graph serves every layer.
    """
    layers = decoder_layers(model)
    for i, layer in enumerate(layers):
        if not isinstance(layer, CheckpointedLayer):
            layers[i] = CheckpointedLayer(layer, active=False)
    return len(layers)


def uncheckpoint_layers(model: nn.Module) -> int:
    """Undo `checkpoint_layers` (puts the original layer modules back)."""
    layers = decoder_layers(model)
    for i, layer in enumerate(layers):
        if isinstance(layer, CheckpointedLayer):
            layers[i] = layer.layer
    return len(layers)
