"""Ways of choosing what trains. Each method module exposes the same small interface:

- `apply(model, cfg) -> model`: make the model trainable the method's way;
- `save(model, out_dir)`: write the trained part (PEFT adapter or full weights, safetensors);
- `load_state(model, out_dir)`: restore a saved trained part into a model prepared by `apply` (resume);
- `load_for_inference(base_model, out_dir) -> model`: rebuild the trained model from a run;
- `merge(model) -> model`: fold the trained part into plain weights, or raise NotMergeable;
- `WEIGHTS_DIR`: the run sub-folder name ("adapter" or "model").

A method that wants some parameters to learn faster or slower (LoRA+) tags them with
`set_lr_scale`; the engine turns the tags into optimizer parameter groups.
"""

from __future__ import annotations

import importlib
import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

import torch

METHODS: dict[str, str] = {
    "full": "tunelab.methods.full",
    "freeze": "tunelab.methods.freeze",
    "lora": "tunelab.methods.lora",
    "qlora": "tunelab.methods.qlora",
    "adapter": "tunelab.methods.adapter",
    "ia3": "tunelab.methods.ia3",
    "prefix": "tunelab.methods.prompt",
    "ptuning_v2": "tunelab.methods.prompt",
    "prompt": "tunelab.methods.prompt",
    "ptuning": "tunelab.methods.prompt",
}

QUANTIZED_METHODS = ("qlora",)
"""Methods whose base holds bitsandbytes layers; only these (and 8-bit optimizers) import bitsandbytes."""

LR_SCALE_ATTR = "tunelab_lr_scale"


class NotMergeable(ValueError):
    """This method's trained part cannot be folded into the base weights; the message says what to do instead."""


def get_method(name: str) -> ModuleType:
    """The module implementing a method by name."""
    if name not in METHODS:
        raise ValueError(f"method.name: unknown method {name!r}; choose from {', '.join(METHODS)}")
    if name in QUANTIZED_METHODS:
        return importlib.import_module(METHODS[name])
    with without_bitsandbytes():  # importing peft would import bitsandbytes (see without_bitsandbytes)
        return importlib.import_module(METHODS[name])


def import_bitsandbytes(needed_by: str) -> ModuleType:
    """bitsandbytes, for a 4-bit method or an 8-bit optimizer (its only users in tunelab).

    On import it looks on the Hugging Face hub for an optional CPU kernel. tunelab keeps the hub
    offline (HF_HUB_OFFLINE, set by `import tunelab`), so the lookup fails locally without a network
    call; its two warnings about that are muted here. `needed_by` names the setting in the error
    shown when bitsandbytes is not installed.
    """
    loggers = [logging.getLogger(name) for name in ("bitsandbytes", "kernels")]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.ERROR)
    try:
        import bitsandbytes
    except ImportError as e:
        raise ImportError(f"{needed_by} needs bitsandbytes: pip install bitsandbytes") from e
    finally:
        for log, level in zip(loggers, levels):
            log.setLevel(level)
    return bitsandbytes


@contextmanager
def without_bitsandbytes() -> Iterator[None]:
    """Keep PEFT from importing bitsandbytes where no quantized layer is involved.

    PEFT imports bitsandbytes whenever it is installed (on `import peft`, and when it wraps a model,
    to recognise 4/8-bit layers), and importing bitsandbytes on a CPU with AVX512-BF16 tries to fetch
    a kernel from the Hugging Face hub and prints a warning. A LoRA, IA3 or prompt run needs none of
    it, so inside this block the module is marked unavailable the documented way (`sys.modules[name]
    = None`: `find_spec` answers None and `import` raises ImportError, which PEFT handles), and
    PEFT's cached availability answers are cleared before and after, so a later qlora run in the same
    process sees bitsandbytes again. Once bitsandbytes is imported (qlora, an 8-bit optimizer) this
    does nothing: the model may hold its layers.
    """
    if "bitsandbytes" in sys.modules:
        yield
        return
    sys.modules["bitsandbytes"] = None  # type: ignore[assignment]

    def clear_peft_cache() -> None:
        import_utils = sys.modules.get("peft.import_utils")  # never import peft just for this
        for check in ("is_bnb_available", "is_bnb_4bit_available"):
            getattr(getattr(import_utils, check, None), "cache_clear", lambda: None)()

    try:
        clear_peft_cache()
        yield
    finally:
        if "bitsandbytes" in sys.modules and sys.modules["bitsandbytes"] is None:
            del sys.modules["bitsandbytes"]
        clear_peft_cache()


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


def set_lr_scale(param: torch.nn.Parameter, scale: float) -> None:
    """Ask the engine to train this parameter at lr * scale (multiplies with layer-wise decay)."""
    setattr(param, LR_SCALE_ATTR, float(scale))


def lr_scale(param: torch.nn.Parameter) -> float:
    """The multiplier a method set with set_lr_scale (1.0 when none)."""
    return getattr(param, LR_SCALE_ATTR, 1.0)


def decoder_layers(model) -> tuple[str, torch.nn.ModuleList]:
    """(qualified name, module list) of the model's repeated blocks: the longest ModuleList in it (of a
    vision-language model, the longest outside its vision tower)."""
    best: tuple[str, torch.nn.ModuleList] | None = None
    lists = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.ModuleList)]
    text_lists = [(n, m) for n, m in lists if not re.search(r"(^|\.)(vision_tower|vision_model|visual)\.", n)]
    for name, module in text_lists or lists:
        if best is None or len(module) > len(best[1]):
            best = (name, module)
    if best is None:
        raise ValueError(f"{type(model).__name__}: no list of decoder layers found (no nn.ModuleList)")
    return best


def layer_index(param_name: str, layers_name: str) -> int | None:
    """Which decoder layer a parameter belongs to (None for embeddings, head, final norm)."""
    m = re.match(re.escape(layers_name) + r"\.(\d+)\.", param_name)
    return int(m.group(1)) if m else None


def head_and_embedding_ids(model) -> tuple[set[int], set[int]]:
    """ids of the output head's parameters and the input embeddings' parameters."""
    head: set[int] = set()
    for name in ("get_output_embeddings",):
        module = getattr(model, name, lambda: None)()
        if module is not None:
            head |= {id(p) for p in module.parameters()}
    for n, m in model.named_modules():
        if n.rsplit(".", 1)[-1] in ("score", "classifier"):
            head |= {id(p) for p in m.parameters()}
    emb = getattr(model, "get_input_embeddings", lambda: None)()
    return head, ({id(p) for p in emb.parameters()} if emb is not None else set())
