"""Runs, base models, chat and export: thin wrappers over tunelab.run, tunelab.infer and tunelab.export."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tunelab.runfolder import RunFolder
from tunelab.studio.paths import NotFound, Settings, StudioError, inside, safe_name, short_repr

ALIASES = ("smollm2-135m",)
EXPORT_FORMATS = ("merged", "gguf", "ollama")


def run_path(settings: Settings, name: str) -> Path:
    """The run folder `runs/<name>` (refusing names that leave runs/)."""
    p = inside(settings.runs / name, [settings.runs], "run", short_repr(name))
    if p.parent != settings.runs or not RunFolder(p).has_config():
        raise NotFound(f"no run {name!r} under {settings.runs}")
    return p


def list_run_rows(settings: Settings) -> list[dict]:
    """One row per run folder with its key metrics (tunelab.eval.report.list_runs)."""
    from tunelab.eval.report import list_runs

    rows = list_runs(settings.runs, sort="created", desc=True)
    for r in rows:
        folder = RunFolder(settings.runs / r["name"])
        r["has_weights"], r["has_summary"] = folder.has_weights(), folder.is_finished()
    return rows


def metrics(settings: Settings, name: str) -> list[dict]:
    """The run's metrics.jsonl rows (train and eval lines)."""
    from tunelab.eval.report import read_metrics

    return read_metrics(run_path(settings, name))


def report(settings: Settings, name: str) -> Path:
    """Write (or refresh) the run's report.html and return its path."""
    from tunelab.eval.report import write_report

    return write_report(run_path(settings, name))


def list_models(settings: Settings) -> list[dict]:
    """Base models to choose from: aliases, HF folders and .gguf files under the model roots."""
    from tunelab.models import TINY_MODELS
    from tunelab.models.tiny_vlm import TINY_VLMS

    out = [{"name": a, "kind": "alias"} for a in (*ALIASES, *TINY_MODELS, *TINY_VLMS)]
    for root in settings.model_roots:
        for cfg in sorted(root.rglob("config.json")):
            out.append({"name": _config_name(settings, cfg.parent), "kind": "hf_dir"})
        for g in sorted(root.rglob("*.gguf")):
            out.append({"name": _config_name(settings, g), "kind": "gguf"})
    return out


def _config_name(settings: Settings, path: Path) -> str:
    """A path as a config writes it: relative to the data dir (the worker's cwd) when possible."""
    return str(path.relative_to(settings.data_dir)) if path.is_relative_to(settings.data_dir) else str(path)


class ModelCache:
    """Keeps the last few loaded models (run or base) for the playground; loading is serialized."""

    def __init__(self, size: int = 2):
        self.size = size
        self._items: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, settings: Settings, run: str, target: str) -> tuple[Any, Any, str]:
        """(model, tokenizer, chat_template) of a run ('run') or of its base model with the run's template ('base')."""
        if target not in ("run", "base"):
            raise StudioError(f"target must be 'run' or 'base', got {target!r}")
        path = run_path(settings, run)
        key = (str(path), target, path.stat().st_mtime)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            item = _load(path, target)
            self._items[key] = item
            while len(self._items) > self.size:
                self._items.popitem(last=False)
            return item


def _load(path: Path, target: str) -> tuple[Any, Any, str]:
    from tunelab.bases import load_model
    from tunelab.run import Run

    r = Run(path)
    if target == "run":
        return r.load_model(device="cpu")
    base = load_model(r.base_model_name, r.config.model.dtype, "cpu", False)
    base.eval()
    return base, r.load_tokenizer(), r.chat_template


def chat_stream(cache: ModelCache, settings: Settings, run: str, target: str, messages: list[dict],
                max_new_tokens: int = 128, temperature: float = 0.0) -> Iterator[str]:
    """Pieces of the answer as they are generated (tunelab.infer.generate.stream_chat)."""
    from tunelab.infer.generate import stream_chat

    if not messages or any(m.get("role") not in ("system", "user", "assistant")
                           or not isinstance(m.get("content"), (str, list)) for m in messages):
        raise StudioError("messages: a list of {role: system|user|assistant, content: text (or, for a vision run, "
                          "[{type: text, text}, {type: image_url, image_url: {url: data:image/...;base64,...}}])}")
    if any(isinstance(m["content"], list) for m in messages):  # an image in the playground: a vision run only
        from tunelab.infer.vision import ImageInputError, split_openai_content, stream_chat_vision
        from tunelab.models.vision import load_processor
        from tunelab.runfolder import RunFolder

        folder = RunFolder(run_path(settings, run))
        if not folder.is_vision():
            raise StudioError(f"run {run!r} is a text-only run; it cannot read images")
        try:
            messages, images = split_openai_content(messages)
        except ImageInputError as e:
            raise StudioError(str(e)) from None
        model, _, template = cache.get(settings, run, target)
        yield from stream_chat_vision(model, load_processor(folder.tokenizer_dir), template, messages, images, max_new_tokens,
                                      temperature, repetition_penalty=1.0)
        return
    model, tok, template = cache.get(settings, run, target)
    yield from stream_chat(model, tok, template, messages, max_new_tokens, temperature, 1.0)


def export_run(settings: Settings, name: str, fmt: str, out_name: str | None = None, quant: str | None = None):
    """Write the run as `fmt` under exports/ (never outside the data dir); returns tunelab.run.Exported.

    Adapters are merged first; a run that cannot merge (prefix/prompt tuning, bottleneck adapters)
    gets base + adapter side by side for `merged` and a clear refusal for the other formats. The
    returned label says which, so the UI never calls a base + adapter bundle "merged".
    """
    from tunelab.methods import NotMergeable
    from tunelab.run import Run

    if fmt not in EXPORT_FORMATS:
        raise StudioError(f"format {fmt!r}: choose from {', '.join(EXPORT_FORMATS)}")
    path = run_path(settings, name)
    out_name = safe_name(out_name or f"{name}-{fmt}" + (".gguf" if fmt == "gguf" else ""))
    target = inside(settings.exports / out_name, [settings.exports], "export path")
    if target.exists():
        raise StudioError(f"exports/{out_name} already exists; choose another name")
    options = {"quant": quant} if quant and fmt in ("gguf", "ollama") else {}
    try:
        return Run(path).export_described(fmt, target, **options)
    except NotMergeable as e:
        raise StudioError(str(e)) from None
