"""Ways of choosing what trains. Each method module exposes the same small interface:

- `apply(model, cfg) -> model`: make the model trainable the method's way;
- `save(model, out_dir)`: write the trained part (PEFT adapter or full weights, safetensors);
- `load_state(model, out_dir)`: restore a saved trained part into a model prepared by `apply` (resume);
- `load_for_inference(base_model, out_dir) -> model`: rebuild the trained model from a run;
- `merge(model) -> model`: fold the trained part into plain weights, or raise NotMergeable;
- `WEIGHTS_DIR`: the run sub-folder name ("adapter" or "model").
"""

from __future__ import annotations

import importlib
from types import ModuleType

METHODS: dict[str, str] = {
    "full": "tunelab.methods.full",
    "lora": "tunelab.methods.lora",
}


class NotMergeable(ValueError):
    """This method's trained part cannot be folded into the base weights; the message says what to do instead."""


def get_method(name: str) -> ModuleType:
    """The module implementing a method by name."""
    if name not in METHODS:
        raise ValueError(f"method.name: unknown method {name!r}; choose from {', '.join(METHODS)}")
    return importlib.import_module(METHODS[name])


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts; tied weights are counted once."""
    seen: set[int] = set()
    trainable = total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total
