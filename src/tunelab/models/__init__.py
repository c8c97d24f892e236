"""Model loading (offline), dtype/device choice, and tiny test models."""

from tunelab.models.loader import (MODEL_ALIASES, ModelNotFound, ModelSource, load_model, load_tokenizer, pick_device,
                                   pick_dtype, resolve_model)
from tunelab.models.tiny import TINY_MODELS

__all__ = ["MODEL_ALIASES", "ModelNotFound", "ModelSource", "load_model", "load_tokenizer", "pick_device",
           "pick_dtype", "resolve_model", "TINY_MODELS"]
