"""Shared pieces of the exporters: the Exporter signature, the export error, atomic single-file writes."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol


class ExportError(ValueError):
    """The model, tokenizer, template or options cannot be written in the asked format; the message says why and what to do."""


class Exporter(Protocol):
    """Write an already-merged causal LM (model + tokenizer + chat template) in one format; return the main output path."""

    def __call__(self, model: Any, tokenizer: Any, chat_template: str | None, out_path: str | Path,
                 **options: Any) -> Path: ...


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path` to write a binary file to; on success it is renamed onto `path` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def model_type(model: Any) -> str:
    """The transformers `model_type` of a model (llama, qwen2, ...)."""
    return str(getattr(model.config, "model_type", type(model).__name__))


def require_arch(model: Any, supported: tuple[str, ...], fmt: str) -> str:
    """Return the model's architecture if `fmt` supports it, else raise ExportError naming both."""
    arch = model_type(model)
    if arch not in supported:
        raise ExportError(
            f"format {fmt!r} does not support architecture {arch!r} ({type(model).__name__}); "
            f"supported architectures: {', '.join(supported)}. Export with --format safetensors instead, "
            "then convert with the target runtime's own tools"
        )
    return arch
