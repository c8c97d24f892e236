"""Saving and loading PEFT adapters (shared by lora, qlora, ia3 and the prompt methods).

The run stores a standard PEFT folder (adapter_config.json + adapter_model.safetensors), so
HF, vLLM and llama.cpp users can load it without tunelab.
"""

from __future__ import annotations

from pathlib import Path

from peft import PeftModel, get_peft_model, set_peft_model_state_dict
from safetensors.torch import load_file

from tunelab.methods import without_bitsandbytes


def peft_model(model, config):
    """`peft.get_peft_model` without importing bitsandbytes for an unquantized model (see without_bitsandbytes)."""
    with without_bitsandbytes():
        return get_peft_model(model, config)


def save(model, out_dir: Path) -> None:
    """Write the adapter in PEFT format (safetensors)."""
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
