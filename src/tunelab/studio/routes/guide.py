"""The guided New-job flow: presets, tasks and method trade-offs, recommended settings for a model and device,
and the run-vs-run config diff. Read-only: nothing here writes a file, runs code or reads a path a request
names (a model must pass the studio's path rules; runs are found through runs.run_path)."""

from __future__ import annotations

from fastapi import APIRouter

from tunelab.studio import forms, guide, runs
from tunelab.studio.paths import StudioError
from tunelab.studio.routes.deps import SettingsDep

router = APIRouter(tags=["guide"])


@router.get("/api/presets")
def list_presets() -> list[dict]:
    """Starting points (the files in examples/presets/): id, title, what it is for, its YAML, its config without
    data paths (the dataset comes from the library)."""
    return guide.presets()


@router.get("/api/guide")
def guide_facts() -> dict:
    """Tasks (each with its stages), every method's one-line trade-off, and which settings the flow shows first."""
    return {"tasks": guide.TASKS, "methods": guide.METHODS, "key_settings": list(guide.KEY_SETTINGS)}


@router.get("/api/recommend")
def recommend(settings: SettingsDep, model: str = "smollm2-135m", method: str = "lora", stage: str = "sft",
              device: str = "auto", p95_tokens: int | None = None) -> dict:
    """Defaults for the key settings for this model, method, stage and device (each with its reason)."""
    if problem := forms._model_problem(model, settings):
        raise StudioError(problem)
    if method not in guide.METHODS:
        raise StudioError(f"method {method!r}: choose from {', '.join(guide.METHODS)}")
    kind, budget = guide.device_memory_gib(device if device in ("auto", "cpu", "cuda", "h100") else "auto")
    facts = guide.model_facts(settings, _entry(settings, model))
    values = guide.recommended(model, method, stage, kind, facts.get("params"), facts.get("context"), p95_tokens)
    return {"device": kind, "memory_gib": round(budget, 2), "model": facts, "values": values}


def _entry(settings, name: str) -> dict:
    """The model list's entry for a name (an alias, or a folder/file under a model root)."""
    for m in runs.list_models(settings):
        if m["name"] == name:
            return m
    return {"name": name, "kind": "path"}


@router.get("/api/runs/diff")
def runs_diff(a: str, b: str, settings: SettingsDep) -> dict:
    """Every config key two runs differ in (a, b) and a unified diff of their resolved YAML."""
    return guide.config_diff(runs.run_path(settings, a), runs.run_path(settings, b))
