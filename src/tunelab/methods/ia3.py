"""(IA)^3 (Liu et al. 2022, arXiv:2205.05638) through PEFT: learned vectors rescale keys, values and
the MLP's inner activations. Tiny (a vector per target) and mergeable (the vectors fold into the weights)."""

from __future__ import annotations

from peft import IA3Config

from tunelab.methods.peft_io import load_for_inference, load_state, peft_model, save

__all__ = ["WEIGHTS_DIR", "apply", "load_for_inference", "load_state", "merge", "save"]

WEIGHTS_DIR = "adapter"


def apply(model, cfg):
    """Freeze the base and add (IA)^3 scaling vectors; feedforward targets must also be targets."""
    missing = [m for m in cfg.feedforward_modules if m not in cfg.target_modules]
    if missing:
        raise ValueError(f"method.feedforward_modules: {missing} are not in method.target_modules; add them there")
    config = IA3Config(target_modules=list(cfg.target_modules), feedforward_modules=list(cfg.feedforward_modules),
                       task_type="CAUSAL_LM")
    return peft_model(model, config)


def merge(model):
    """Multiply the vectors into the weights and return the plain model."""
    return model.merge_and_unload()
