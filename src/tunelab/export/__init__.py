"""Export a merged model (model + tokenizer + chat template) to deployment formats.

Each format is one function in EXPORTERS with the signature
`fn(model, tokenizer, chat_template, out_path, **options) -> Path`; `export()` picks it by name
and checks the options. Adapters are merged before this point (methods/), so every exporter
sees a plain Hugging Face causal LM.

    >>> from tunelab.export import export
    >>> export(model, tokenizer, chat_template, "gguf", "out/model.gguf", quant="q8_0")
"""

from __future__ import annotations

import difflib
import inspect
from pathlib import Path
from typing import Any

from tunelab.export.base import Exporter, ExportError
from tunelab.export.gguf import GGUF_ARCHS, GGUF_QUANTS, export_gguf
from tunelab.export.ollama import CHAT_STYLES, export_ollama, modelfile
from tunelab.export.onnx import export_onnx
from tunelab.export.safetensors import export_merged
from tunelab.export.triton import export_triton

EXPORTERS: dict[str, Exporter] = {
    "safetensors": export_merged,
    "merged": export_merged,
    "gguf": export_gguf,
    "ollama": export_ollama,
    "onnx": export_onnx,
    "triton": export_triton,
}


def check_export(fmt: str, options: dict[str, Any]) -> None:
    """Refuse an unknown format, an option the format does not take, or a GGUF quant type it cannot write.

    Needs no model, so callers (`Run.export`, the CLI) run it before loading one: a typo fails in
    a second rather than after minutes of loading and merging.
    """
    if fmt not in EXPORTERS:
        near = difflib.get_close_matches(fmt, EXPORTERS, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ExportError(f"unknown export format {fmt!r}{hint}; choose from {', '.join(EXPORTERS)}")
    fn = EXPORTERS[fmt]
    params = inspect.signature(fn).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    accepted = [n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = [k for k in options if k not in accepted]
    if unknown and not takes_any:
        raise ExportError(f"format {fmt!r} does not take option(s) {', '.join(unknown)}; "
                          f"it takes: {', '.join(accepted) or 'none'}")
    quant = options.get("quant")
    if fmt in ("gguf", "ollama") and quant is not None and str(quant).lower() not in GGUF_QUANTS:
        raise ExportError(f"quant={quant!r} is not a GGUF type this exporter writes; choose from "
                          f"{', '.join(GGUF_QUANTS)}")


def export(model: Any, tokenizer: Any, chat_template: str | None, fmt: str, out_path: str | Path,
           **options: Any) -> Path:
    """Write `model` in format `fmt` to `out_path` and return the main output path (file or folder).

    Unknown formats and options are rejected up front (`check_export`), naming the accepted ones.
    """
    check_export(fmt, options)
    return EXPORTERS[fmt](model, tokenizer, chat_template, out_path, **options)


__all__ = [
    "CHAT_STYLES",
    "EXPORTERS",
    "GGUF_ARCHS",
    "GGUF_QUANTS",
    "ExportError",
    "check_export",
    "Exporter",
    "export",
    "export_gguf",
    "export_merged",
    "export_ollama",
    "export_onnx",
    "export_triton",
    "modelfile",
]
