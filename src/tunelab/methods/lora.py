"""LoRA (Hu et al. 2021, arXiv:2106.09685) through PEFT: low-rank updates on linear layers.

Options: DoRA (arXiv:2402.09353), rsLoRA (arXiv:2312.03732), PiSSA / LoftQ / gaussian
initialisation, LoRA+ (arXiv:2402.12354: B matrices learn `lora_plus_ratio` times faster,
through a parameter group the engine builds from `set_lr_scale`), and `modules_to_save`.
"""

from __future__ import annotations

from peft import LoraConfig

from tunelab.methods import set_lr_scale
from tunelab.methods.peft_io import load_for_inference, load_state, peft_model, save

__all__ = ["WEIGHTS_DIR", "apply", "load_for_inference", "load_state", "merge", "peft_config", "save"]

WEIGHTS_DIR = "adapter"

TARGET_PRESETS: dict[str, list[str] | str] = {
    "all-linear": "all-linear",
    "attention": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mlp": ["gate_proj", "up_proj", "down_proj"],
}

# tunelab init name -> peft's init_lora_weights value ("loftq" is computed by tunelab.methods.qlora on any device)
INIT: dict[str, object] = {"default": True, "gaussian": "gaussian", "pissa": "pissa", "loftq": True}


def peft_config(cfg) -> LoraConfig:
    """The PEFT LoraConfig for a tunelab LoraCfg."""
    targets = cfg.target_modules
    targets = TARGET_PRESETS[targets] if isinstance(targets, str) else list(targets)
    if cfg.init == "loftq" and cfg.name != "qlora":
        raise ValueError("method.init: loftq initialises the adapter to cancel the 4-bit quantization error of the "
                         "base weights, so it needs a quantized base: use method.name=qlora with method.init=loftq")
    return LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
                      task_type="CAUSAL_LM", bias="none", use_dora=cfg.dora, use_rslora=cfg.rslora,
                      init_lora_weights=INIT[cfg.init], modules_to_save=list(cfg.modules_to_save) or None)


def apply(model, cfg):
    """Freeze the base and add adapters; a target list that matches no module is a clear error."""
    try:
        model = peft_model(model, peft_config(cfg))
    except ValueError as e:
        if "not found in the base model" in str(e) or "Target modules" in str(e):
            names = sorted({n.rsplit(".", 1)[-1] for n, _ in model.named_modules() if n})
            raise ValueError(f"method.target_modules: {cfg.target_modules!r} matches no module of this model; "
                             f"module names include {', '.join(names[:20])}") from None
        raise
    if cfg.lora_plus_ratio:
        for name, p in model.named_parameters():
            if "lora_B" in name:
                set_lr_scale(p, cfg.lora_plus_ratio)
    return model


def merge(model):
    """Fold the adapter into the base weights and return the plain model."""
    return model.merge_and_unload()
