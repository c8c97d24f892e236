"""Vision-language models: which folders hold one, how to load it with its processor, and which of its
modules belong to the vision tower, the projector (connector) or the language model.

A VLM is a folder whose config.json names an image-text-to-text architecture that transformers knows
(`AutoModelForImageTextToText`). The families tunelab is tested with are listed in VISION_FAMILIES; each
says, by parameter-name prefix, where its vision tower and projector live, so methods can freeze or train
them by family (`method.train_vision`, `method.train_projector`) and LoRA targets only the language model.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class VisionFamily:
    """Where a family keeps its parts, as regular expressions on parameter/module names (re.search)."""

    name: str
    vision: str
    projector: str


VISION_FAMILIES: dict[str, VisionFamily] = {
    "llava": VisionFamily("LLaVA", r"(^|\.)vision_tower\.", r"(^|\.)multi_modal_projector\."),
    "llava_next": VisionFamily("LLaVA-NeXT", r"(^|\.)vision_tower\.", r"(^|\.)multi_modal_projector\.|image_newline"),
    "qwen2_vl": VisionFamily("Qwen2-VL", r"(^|\.)visual\.(?!merger)", r"(^|\.)visual\.merger\."),
    "qwen2_5_vl": VisionFamily("Qwen2.5-VL", r"(^|\.)visual\.(?!merger)", r"(^|\.)visual\.merger\."),
    "idefics3": VisionFamily("Idefics3", r"(^|\.)vision_model\.", r"(^|\.)connector\."),
    "smolvlm": VisionFamily("SmolVLM", r"(^|\.)vision_model\.", r"(^|\.)connector\."),
}
"""model_type -> its parts. Other image-text-to-text types load too, with these generic patterns."""

GENERIC = VisionFamily("image-text-to-text", r"(^|\.)(vision_tower|vision_model|visual|vision_encoder)\.",
                       r"(^|\.)(multi_modal_projector|connector|mm_projector|merger)\.")


class VisionModelError(ValueError):
    """A vision model or processor cannot be used as asked; the message says what to change."""


def model_type_of(folder: str | Path) -> str | None:
    """The `model_type` in a model folder's config.json (None when there is no readable config)."""
    path = Path(folder) / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def is_vision_folder(folder: str | Path) -> bool:
    """Whether a HF model folder holds an image-text-to-text model (its config has a vision part)."""
    mtype = model_type_of(folder)
    if mtype is None:
        return False
    if mtype in VISION_FAMILIES:
        return True
    try:
        from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
    except ImportError:  # pragma: no cover - older transformers
        return False
    return mtype in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES and "vision_config" in json.loads(
        (Path(folder) / "config.json").read_text(encoding="utf-8"))


def family_of(model) -> VisionFamily:
    """The VisionFamily of a loaded model (through PEFT wrappers), GENERIC for unlisted types."""
    config = getattr(model, "config", None)
    return VISION_FAMILIES.get(getattr(config, "model_type", None), GENERIC)


def part_of(param_name: str, family: VisionFamily) -> str:
    """'vision', 'projector' or 'language' for a parameter or module name of a model of `family`."""
    if re.search(family.projector, param_name):
        return "projector"
    if re.search(family.vision, param_name):
        return "vision"
    return "language"


def load_vision_model(folder: str | Path, dtype: torch.dtype, trust_remote_code: bool = False):
    """The image-text-to-text model in a local folder (never downloads)."""
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(str(folder), dtype=dtype, trust_remote_code=trust_remote_code,
                                                       local_files_only=True)


def load_processor(folder: str | Path, trust_remote_code: bool = False):
    """The processor (image processor + tokenizer + chat template) saved in a model or run folder.

    A family whose processor also takes a video processor (Qwen2-VL, Qwen2.5-VL) loads without it where
    torchvision is missing (tunelab.models.image_only): tunelab feeds images and text only.
    """
    from transformers import AutoProcessor

    from tunelab.models.image_only import load_image_only, needs_image_only

    try:
        if (cls := needs_image_only(folder)) is not None:
            proc = load_image_only(cls, folder, trust_remote_code)
        else:
            proc = AutoProcessor.from_pretrained(str(folder), trust_remote_code=trust_remote_code,
                                                 local_files_only=True)
    except (OSError, ValueError, AttributeError, ImportError) as e:
        raise VisionModelError(f"{folder}: cannot load its processor ({e}); a vision model folder needs "
                               "processor_config.json / preprocessor_config.json and the tokenizer files "
                               "(save them with processor.save_pretrained)") from None
    if not hasattr(proc, "image_processor") or not hasattr(proc, "tokenizer"):
        raise VisionModelError(f"{folder}: its processor ({type(proc).__name__}) has no image processor and "
                               "tokenizer; is this an image-text-to-text model?")
    if proc.tokenizer.pad_token is None:
        proc.tokenizer.pad_token = proc.tokenizer.eos_token
    return proc


def language_linear_names(model, family: VisionFamily, suffixes: list[str] | None, vision_too: bool) -> list[str]:
    """Names of the nn.Linear modules LoRA should wrap: the language model's (and the vision tower's when
    `vision_too`), never the output head nor the projector (the projector trains in full, see methods)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    out = []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or module is head:
            continue
        part = part_of(name + ".", family)
        if part == "projector" or (part == "vision" and not vision_too):
            continue
        if suffixes is not None and name.rsplit(".", 1)[-1] not in suffixes:
            continue
        out.append(name)
    return out


def projector_module_names(model, family: VisionFamily) -> list[str]:
    """The top-most modules of the projector (what `modules_to_save` needs to train it in full)."""
    names = [n for n, _ in model.named_modules() if n and part_of(n + ".", family) == "projector"]
    return [n for n in names if not any(n.startswith(o + ".") for o in names if o != n)]
