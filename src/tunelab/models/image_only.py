"""Processors of image+video families (Qwen2-VL, Qwen2.5-VL) without their video processor.

transformers builds every video processor with torchvision, and a processor such as `Qwen2VLProcessor`
cannot be constructed or loaded without one, so where torchvision is not installed these families would not
load at all. tunelab feeds images and text only, so it loads such a processor as `image_only(cls)`: the same
class minus the `video_processor` argument, with the PIL image processor transformers picks by itself when
torchvision is missing. Images, the chat template, the image-token expansion and `mm_token_type_ids` come from
transformers' own code unchanged.

What it saves stays a standard folder for the original class: `processor_class` is the original name (the
subclass keeps it), and `processor_config.json` gets a `video_processor` entry (the one the folder came with,
or else the image processor's settings, which is what transformers itself builds a Qwen2-VL video processor
from when a folder has none), so transformers with torchvision loads the folder as the full processor.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import json
from pathlib import Path

PROCESSOR_FILE = "processor_config.json"
VIDEO_PROCESSOR_FILE = "video_preprocessor_config.json"
LEGACY_FILES = ("preprocessor_config.json", "tokenizer_config.json")
"""Where older folders (e.g. the hub's Qwen2-VL) name their processor class, in order after PROCESSOR_FILE."""


def has_torchvision() -> bool:
    """Whether torchvision is importable (transformers needs it for every video processor)."""
    return importlib.util.find_spec("torchvision") is not None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def processor_class_name(folder: str | Path) -> str | None:
    """The processor class a model or run folder names: processor_config.json, then the legacy files, then the
    default processor of config.json's model_type (None when nothing names one)."""
    folder = Path(folder)
    for name in (PROCESSOR_FILE, *LEGACY_FILES):
        cls = _read_json(folder / name).get("processor_class")
        if isinstance(cls, str):
            return cls
    mtype = _read_json(folder / "config.json").get("model_type")
    if not isinstance(mtype, str):
        return None
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    return PROCESSOR_MAPPING_NAMES.get(mtype)


def video_processor_config(folder: str | Path) -> dict | None:
    """The video processor settings a folder holds (nested in processor_config.json or in its own file)."""
    folder = Path(folder)
    nested = _read_json(folder / PROCESSOR_FILE).get("video_processor")
    if isinstance(nested, dict):
        return nested
    return _read_json(folder / VIDEO_PROCESSOR_FILE) or None


def needs_image_only(folder: str | Path) -> type | None:
    """The transformers processor class of `folder` when it must load as `image_only` here (it takes a video
    processor and torchvision is missing); None when AutoProcessor loads the folder as it is."""
    if has_torchvision():
        return None
    name = processor_class_name(folder)
    if name is None:
        return None
    import transformers

    cls = getattr(transformers, name, None)
    return cls if _takes_video(cls) else None


def _takes_video(cls) -> bool:
    """Whether `cls` is a processor class whose constructor takes a video processor."""
    return isinstance(cls, type) and "video_processor" in inspect.signature(cls.__init__).parameters


@functools.cache
def image_only(cls: type) -> type:
    """`cls` (a transformers processor class that takes a video processor) without that video processor.

    The subclass keeps `cls`'s name, so the tokenizer and processor configs it saves name `cls` and any
    transformers loads the folder as `cls`. `video_processor_config` (a dict, or None) is written back as
    the `video_processor` entry of processor_config.json; see the module docstring.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        cls.__init__(self, image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template,
                     **kwargs)
        self.video_processor_config = None

    def to_dict(self) -> dict:
        out = cls.to_dict(self)
        out["processor_class"] = cls.__name__
        out["video_processor"] = self.video_processor_config or dict(out["image_processor"])
        return out

    doc = f"{cls.__name__} for images and text only (built without a video processor)."
    return type(cls.__name__, (cls,), {"__init__": __init__, "to_dict": to_dict, "__doc__": doc,
                                       "__module__": __name__, "__qualname__": cls.__name__})


def __getattr__(name: str) -> type:
    """`tunelab.models.image_only.Qwen2VLProcessor` is `image_only(transformers.Qwen2VLProcessor)`, so pickle
    (multiprocessing, dataset fingerprints) finds the subclass by its module and name in any process."""
    import transformers

    cls = getattr(transformers, name, None) if name.endswith("Processor") else None
    if not _takes_video(cls):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return image_only(cls)


def load_image_only(cls: type, folder: str | Path, trust_remote_code: bool = False):
    """`image_only(cls)` loaded from a local folder with transformers' own loading (image processor, tokenizer,
    chat template); the folder's video processor settings are kept for saving."""
    proc = image_only(cls).from_pretrained(str(folder), trust_remote_code=trust_remote_code, local_files_only=True)
    proc.video_processor_config = video_processor_config(folder)
    return proc
