"""Freeze tuning: train a chosen part of the model (top layers, name patterns, head, embeddings) and
keep the rest fixed. No new parameters, so the run stores full HF weights and merging is a no-op."""

from __future__ import annotations

import re

from tunelab.methods import decoder_layers, head_and_embedding_ids, layer_index
from tunelab.methods.full import (
    WEIGHTS_DIR,
    load_for_inference,
    load_state,
    merge,
    save,
)

__all__ = ["WEIGHTS_DIR", "apply", "load_for_inference", "load_state", "merge", "save", "trainable_names"]


def trainable_names(model, cfg) -> list[str]:
    """Names of the parameters the config selects (the top `layers` blocks, patterns, head, embeddings)."""
    layers_name, layers = decoder_layers(model)
    first_trained = len(layers) - min(cfg.layers, len(layers))
    head, emb = head_and_embedding_ids(model)
    patterns = [re.compile(p) for p in cfg.patterns]
    chosen = []
    for name, p in model.named_parameters():
        i = layer_index(name, layers_name)
        if ((i is not None and i >= first_trained and cfg.layers) or any(r.search(name) for r in patterns)
                or (cfg.head and id(p) in head) or (cfg.embeddings and id(p) in emb)):
            chosen.append(name)
    return chosen


def apply(model, cfg):
    """Make exactly the selected parameters trainable; a pattern matching nothing is an error."""
    for r in cfg.patterns:
        if not any(re.search(r, n) for n, _ in model.named_parameters()):
            examples = [n for n, _ in model.named_parameters()][:6]
            raise ValueError(f"method.patterns: {r!r} matches no parameter; names look like {', '.join(examples)}")
    chosen = set(trainable_names(model, cfg))
    for name, p in model.named_parameters():
        p.requires_grad_(name in chosen)
    return model
