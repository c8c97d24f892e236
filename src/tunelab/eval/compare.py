"""Base-vs-tuned (or run-vs-run) comparison: the other system, metric deltas, paired predictions.

The other system is scored by the very same function with the very same settings, so a
delta is only the effect of training. "base" is the run's base model (config.model.name)
rendered with the run's own chat template: the question is what training changed, not
what a different prompt format does.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

PAIRED_KEYS = ("prompt", "reference", "task")  # the same in both rows; everything else gets a compare_ twin


def load_other(run, spec: str, device: str = "auto") -> tuple[str, tuple[Any, Any, str]]:
    """(name, (model, tokenizer, template)) for `spec`: "base" or the path of another run folder."""
    if spec == "base":
        from tunelab.bases import load_model
        from tunelab.models import pick_device

        cfg = run.config.model  # a run-based model's base is that run, merged (tunelab.bases)
        model = load_model(run.base_model_name, cfg.dtype, pick_device(device), cfg.trust_remote_code)
        model.eval()
        return f"base:{cfg.name}", (model, run.load_tokenizer(), run.chat_template)
    other = type(run)(spec)  # another run folder, opened as this one was (tunelab.run imports eval, not back)
    if Path(spec).resolve() == Path(run.path).resolve():
        raise ValueError(f"--compare {spec}: that is the run being evaluated; compare with 'base' or another run")
    name = other.path.resolve().name
    if name == Path(run.path).resolve().name:
        name = str(other.path)
    return name, other.load_model(device=device)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def metric_deltas(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, float]:
    """ours - theirs for every numeric metric both have (nested dicts and "n" left out)."""
    return {k: ours[k] - theirs[k] for k in ours
            if k != "n" and k in theirs and _is_number(ours[k]) and _is_number(theirs[k])}


def pair_rows(ours: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per example: ours as is, plus theirs under compare_<key> (e.g. compare_prediction)."""
    if len(ours) != len(theirs):
        raise ValueError(f"cannot pair {len(ours)} predictions with {len(theirs)}; both must cover the same data")
    return [{**a, **{f"compare_{k}": v for k, v in b.items() if k not in PAIRED_KEYS}} for a, b in zip(ours, theirs)]


def sheet_rows(rows: list[dict[str, Any]], ours: str, theirs: str) -> list[dict[str, Any]]:
    """Rows for write_human_sheet: A = this run's answer, B = the other system's answer."""
    return [{"prompt": r["prompt"], "answer_a_source": ours, "answer_a": r["prediction"],
             "answer_b_source": theirs, "answer_b": r["compare_prediction"]} for r in rows]
