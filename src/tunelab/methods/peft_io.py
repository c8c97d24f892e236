"""Saving and loading PEFT adapters (shared by lora, qlora, ia3 and the prompt methods).

The run stores a standard PEFT folder (adapter_config.json + adapter_model.safetensors), so
HF, vLLM and llama.cpp users can load it without tunelab.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from peft import PeftModel, get_peft_model, set_peft_model_state_dict
from safetensors.torch import load_file

from tunelab.methods import without_bitsandbytes


def peft_model(model, config):
    """`peft.get_peft_model` without importing bitsandbytes for an unquantized model (see without_bitsandbytes)."""
    with without_bitsandbytes():
        return get_peft_model(model, config)


def save(model, out_dir: Path) -> None:
    """Write the adapter in PEFT format (safetensors).

    PEFT asks the hub whether a base recorded by hub id (the bundled GGUF models are) has a config.json, to
    see if the vocabulary was resized; tunelab runs offline (HF_HUB_OFFLINE, set on import), so the answer is
    always "unknown" and PEFT warns on every save before doing what it does without one (embeddings not
    saved unless targeted). That warning says nothing about the run and is dropped here.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Could not find a config file in ", category=UserWarning)
        model.save_pretrained(out_dir, safe_serialization=True)


def load_state(model, out_dir: Path) -> None:
    """Load adapter weights saved by `save` into a model prepared by `apply` (resume)."""
    state = load_file(str(Path(out_dir) / "adapter_model.safetensors"))
    result = set_peft_model_state_dict(model, state)
    if getattr(result, "unexpected_keys", None):
        raise ValueError(f"{out_dir}: adapter does not match the model (unexpected {result.unexpected_keys[:5]})")


def load_for_inference(base_model, out_dir: Path):
    """The base model with the run's adapter attached (not merged: the adapter can still be switched off)."""
    with without_bitsandbytes():
        return PeftModel.from_pretrained(base_model, str(out_dir), is_trainable=False)
