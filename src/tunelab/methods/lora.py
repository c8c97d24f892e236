"""LoRA (Hu et al. 2021, arXiv:2106.09685) through PEFT: low-rank updates on linear layers.

The run stores a standard PEFT adapter folder (adapter_config.json + adapter_model.safetensors),
so HF, vLLM and llama.cpp users can load it without tunelab.
"""

from __future__ import annotations

from pathlib import Path

from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict
from safetensors.torch import load_file

WEIGHTS_DIR = "adapter"

TARGET_PRESETS: dict[str, list[str] | str] = {
    "all-linear": "all-linear",
    "attention": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mlp": ["gate_proj", "up_proj", "down_proj"],
}


def peft_config(cfg) -> LoraConfig:
    """The PEFT LoraConfig for a tunelab LoraCfg."""
    targets = cfg.target_modules
    targets = TARGET_PRESETS[targets] if isinstance(targets, str) else list(targets)
    return LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
                      task_type="CAUSAL_LM", bias="none")


def apply(model, cfg):
    """Freeze the base and add adapters; a target list that matches no module is a clear error."""
    try:
        return get_peft_model(model, peft_config(cfg))
    except ValueError as e:
        if "not found in the base model" in str(e) or "Target modules" in str(e):
            names = sorted({n.rsplit(".", 1)[-1] for n, _ in model.named_modules() if n})
            raise ValueError(f"method.target_modules: {cfg.target_modules!r} matches no module of this model; "
                             f"module names include {', '.join(names[:20])}") from None
        raise


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
    return PeftModel.from_pretrained(base_model, str(out_dir), is_trainable=False)


def merge(model):
    """Fold the adapter into the base weights and return the plain model."""
    return model.merge_and_unload()
