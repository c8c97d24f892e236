"""What a stage needs to train a vision-language model: choose what trains by module family, and the loss.

By default only the language model trains (LoRA: adapters on its linear layers; full/freeze: its weights);
the vision tower and the projector stay frozen. `method.train_vision` adds the vision tower (LoRA adapters on
its linears, or its weights), `method.train_projector` trains the projector in full (LoRA: as PEFT
`modules_to_save`, so it is saved in the adapter folder and merged with it).
"""

from __future__ import annotations

from tunelab.data.vision import collate_vision
from tunelab.engine.loop import LOSS_COUNT_KEY
from tunelab.engine.loss import causal_lm_loss_sum, count_targets
from tunelab.models.vision import VisionModelError, family_of, language_linear_names, part_of, projector_module_names

__all__ = ["VISION_METHODS", "collate_vision", "method_cfg_for_vision", "check_switches", "set_trainable_parts",
           "vision_loss"]

VISION_STAGES = ("sft",)
"""Stages that train vision-language models (their samples carry images: tunelab.data.vision)."""
VISION_METHODS = ("lora", "qlora", "full", "freeze")
"""Methods that train vision-language models (the others wrap a text-only decoder's inputs or layers)."""


def check_switches(method_cfg, is_vision: bool) -> None:
    """Refuse a method that cannot train a VLM, and vision switches on a text-only model."""
    if is_vision and method_cfg.name not in VISION_METHODS:
        raise VisionModelError(f"method.name: {method_cfg.name} is not supported for vision-language models; use "
                               f"one of {', '.join(VISION_METHODS)}")
    if not is_vision:
        for key in ("train_vision", "train_projector"):
            if getattr(method_cfg, key, False):
                raise VisionModelError(f"method.{key}: the model has no vision tower (it is a text-only model); "
                                       f"remove method.{key}")


def method_cfg_for_vision(model, method_cfg):
    """LoRA/QLoRA settings made explicit for a VLM: targets are the language model's linears (matching the
    preset or names asked for), plus the vision tower's with train_vision; the projector goes to
    modules_to_save with train_projector. Other methods' settings are returned unchanged."""
    if method_cfg.name not in ("lora", "qlora"):
        return method_cfg
    from tunelab.methods.lora import TARGET_PRESETS

    family = family_of(model)
    targets = method_cfg.target_modules
    suffixes = None if targets == "all-linear" else (TARGET_PRESETS[targets] if isinstance(targets, str)
                                                      else list(targets))
    names = language_linear_names(model, family, suffixes, method_cfg.train_vision)
    if not names:
        raise VisionModelError(f"method.target_modules: {targets!r} matches no linear layer of the language model")
    save = list(method_cfg.modules_to_save)
    if method_cfg.train_projector:
        save += [n for n in projector_module_names(model, family) if n not in save]
    return method_cfg.model_copy(update={"target_modules": names, "modules_to_save": save})


def set_trainable_parts(model, method_cfg) -> None:
    """After a full/freeze method: the vision tower trains only with train_vision, the projector only with
    train_projector (LoRA needs nothing here: its base is frozen and its targets were chosen above)."""
    if method_cfg.name not in ("full", "freeze"):
        return
    family = family_of(model)
    for name, p in model.named_parameters():
        part = part_of(name, family)
        if part == "vision":
            p.requires_grad_(bool(method_cfg.train_vision))
        elif part == "projector":
            p.requires_grad_(bool(method_cfg.train_projector))


def vision_loss(model, batch: dict):
    """(summed next-token loss over assistant tokens, their count) for a batch of image+text samples.

    The image tensors go to the model with the tokens; labels are -100 on image tokens and prompts
    (tunelab.data.vision), so only answers carry loss. The engine normalizes by the accumulated count.
    """
    inputs = {k: v for k, v in batch.items() if k not in ("labels", LOSS_COUNT_KEY)}
    count = batch.get(LOSS_COUNT_KEY) or count_targets(batch["labels"])
    out = model(**inputs, use_cache=False)  # (B, T, V)
    return causal_lm_loss_sum(out.logits, batch["labels"]), count
