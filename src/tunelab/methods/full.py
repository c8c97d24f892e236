"""Full fine-tuning: every weight trains; the run stores complete HF weights in safetensors."""

from __future__ import annotations

from pathlib import Path

from tunelab.methods.weights import load_safetensors_dir

WEIGHTS_DIR = "model"


def apply(model, cfg):
    """Mark every parameter trainable."""
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def save(model, out_dir: Path) -> None:
    """Write the model with save_pretrained (safetensors, sharded when large)."""
    model.save_pretrained(out_dir, safe_serialization=True)


def load_state(model, out_dir: Path) -> None:
    """Load saved weights into the model in place (tied weights are restored through their owner)."""
    load_safetensors_dir(model, out_dir)


def load_for_inference(base_model, out_dir: Path):
    """The saved weights loaded into the base architecture."""
    load_safetensors_dir(base_model, out_dir)
    return base_model


def merge(model):
    """Nothing to merge: the weights are already plain."""
    return model
