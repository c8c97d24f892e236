"""A run's evidence in one self-contained HTML file, and the table of runs behind `tunelab runs`.

`write_report(run_dir)` reads whatever the run folder holds (config.yaml, run.json,
metrics.jsonl, summary.json, eval/*.json, eval/*.predictions.jsonl) and writes
`report.html`: plots are inline SVG drawn by matplotlib's Agg backend, so the file needs no
network, no JavaScript and no other file to display. Missing pieces are named in the report.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from tunelab.data.io import read_records
from tunelab.eval.overfit import Mark, detect_overfitting
from tunelab.utils.io import atomic_write_text

TEMPLATES = Path(__file__).parent / "templates"
N_SAMPLES = 5  # predictions shown per eval file
RUN_MARKERS = ("config.yaml", "run.json", "metrics.jsonl", "summary.json")
RUN_COLUMNS = ("name", "base_model", "method", "steps", "train_loss", "eval_loss", "created")


class ReportError(ValueError):
    """The folder is not a run folder or one of its files is unreadable; the message names it."""


def _load_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ReportError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(obj, dict):
        raise ReportError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


def _load_yaml(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        obj = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ReportError(f"{path}: not valid YAML ({e})") from None
    return obj if isinstance(obj, dict) else {}


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of `<run>/metrics.jsonl` ([] when absent); a bad line raises naming file:line."""
    path = Path(run_dir) / "metrics.jsonl"
    return [r.data for r in read_records(path)] if path.is_file() else []


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 1e-4}} -> {"train.lr": 1e-4}; lists stay values."""
    if not isinstance(obj, dict):
        return {prefix: obj}
    out: dict[str, Any] = {}
    for key, value in obj.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _series(rows: Sequence[dict[str, Any]], key: str, require_absent: str | None = None) -> tuple[list, list]:
    """(steps, values) of `key` over rows, skipping rows without a finite number there."""
    xs, ys = [], []
    for row in rows:
        value = row.get(key)
        if require_absent and require_absent in row:
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            xs.append(row.get("step"))
            ys.append(value)
    return xs, ys


def _svg(fig) -> str:
    """A matplotlib figure as an inline <svg> element (text drawn as paths: no fonts needed)."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    text = buf.getvalue()
    return text[text.index("<svg"):]


def _plots(rows: Sequence[dict[str, Any]], marks: Sequence[Mark]) -> dict[str, str]:
    """Inline SVGs keyed by plot name, for the curves that have data."""
    # A bare Figure renders without pyplot, so no GUI backend is touched and the caller's
    # matplotlib backend stays as it was (headless, like Agg).
    from matplotlib.figure import Figure

    out: dict[str, str] = {}
    train, evals = _series(rows, "loss"), _series(rows, "eval_loss")
    if train[0] or evals[0]:
        fig = Figure(figsize=(8, 3.6))
        ax = fig.add_subplot()
        if train[0]:
            ax.plot(*train, label="train loss", color="#1f77b4", linewidth=1.2)
        if evals[0]:
            ax.plot(*evals, label="validation loss", color="#d62728", marker="o", markersize=4)
        for key in _task_keys(rows):  # a multi-task run: one dashed validation curve per task
            ax.plot(*_series(rows, key), label=f"validation {key.split('/', 1)[1]}", linestyle="--", marker=".")
        for i, mark in enumerate(marks):
            ax.axvline(mark.step, color="#ff7f0e", linestyle="--", label="overfitting" if i == 0 else None)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        ax.legend()
        out["loss"] = _svg(fig)
    for key, label, color in (("lr", "learning rate", "#2ca02c"), ("tokens_per_s", "tokens / s", "#9467bd")):
        xs, ys = _series(rows, key, require_absent="eval_loss")
        if xs:
            fig = Figure(figsize=(8, 2.6))
            ax = fig.add_subplot()
            ax.plot(xs, ys, color=color, linewidth=1.2)
            ax.set_xlabel("step")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
            if key == "lr":
                ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
            out[key] = _svg(fig)
    return out


def _task_keys(rows: list[dict]) -> list[str]:
    """The per-task validation keys (eval_loss/<task>) of a multi-task run, in first-seen order."""
    return list(dict.fromkeys(k for r in rows for k in r if k.startswith("eval_loss/")))


def _evals(run_dir: Path) -> list[dict[str, Any]]:
    """Each eval/<name>.json with its scalar metrics and the first predictions, oldest first."""
    out = []
    for path in sorted((run_dir / "eval").glob("*.json")):
        obj = _load_json(path) or {}
        metrics = _flatten(obj.get("metrics", {}))
        notes = {k: metrics.pop(k) for k in [k for k in metrics if k == "note" or k.endswith("/note")]}
        preds_path = path.with_suffix(".predictions.jsonl")
        samples = [r.data for r in read_records(preds_path)[:N_SAMPLES]] if preds_path.is_file() else []
        out.append({"name": path.stem, "data": obj.get("data"), "n": obj.get("n"),
                    "settings": _flatten(obj.get("settings", {})), "metrics": metrics, "samples": samples,
                    "predictions_file": preds_path.name if preds_path.is_file() else None,
                    "compare": _comparison(obj.get("compare"), metrics), "notes": list(notes.values())})
    return out


def _comparison(compare: Any, metrics: dict[str, Any]) -> dict[str, Any] | None:
    """Rows (metric, this run, other, delta) of a `tunelab eval --compare` result; None without one."""
    if not isinstance(compare, dict):
        return None
    theirs, deltas = _flatten(compare.get("metrics", {})), _flatten(compare.get("deltas", {}))
    rows = [(k, v, theirs.get(k), deltas.get(k)) for k, v in metrics.items() if k in deltas]
    return {"name": str(compare.get("name", "other")), "rows": rows}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return "" if value is None else str(value)


def write_report(run_dir: str | Path) -> Path:
    """Write `<run_dir>/report.html` from whatever the run folder holds and return its path."""
    import jinja2

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir}: no such run folder")
    if not any((run_dir / m).is_file() for m in RUN_MARKERS):
        raise ReportError(f"{run_dir}: not a run folder (none of {', '.join(RUN_MARKERS)}); "
                          "pass the folder `tunelab train` wrote, e.g. runs/<name>")
    config, run_info = _load_yaml(run_dir / "config.yaml"), _load_json(run_dir / "run.json")
    summary, rows = _load_json(run_dir / "summary.json"), read_metrics(run_dir)
    marks = detect_overfitting(rows)
    plots = _plots(rows, marks)
    evals = _evals(run_dir) if (run_dir / "eval").is_dir() else []
    missing = [f"{name}: {why}" for name, present, why in (
        ("config.yaml", config is not None, "no config summary"),
        ("run.json", run_info is not None, "base model, parameter counts and creation time unknown"),
        ("metrics.jsonl", bool(rows), "no training curves"),
        ("summary.json", summary is not None, "the run may still be running or was interrupted"),
        ("validation loss", "loss" in plots and any("eval_loss" in r for r in rows),
         "no eval rows in metrics.jsonl (set train.eval_every and data.eval or data.val_size)"),
        ("eval/", bool(evals),
         "no evaluation results; run `tunelab eval RUN_DIR --data FILE [--compare base]` to add them"),
    ) if not present]
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True)
    env.filters["fmt"] = _fmt
    html = env.get_template("report.html.jinja").render(
        name=run_dir.resolve().name, config=_flatten(config or {}), run_info=run_info or {},
        summary=summary or {}, plots=plots, marks=marks, evals=evals, missing=missing,
        generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"))
    return atomic_write_text(run_dir / "report.html", html)


def summarize_run(run_dir: str | Path) -> dict[str, Any]:
    """One row of `tunelab runs`: summary.json first, then run.json/config.yaml, then metrics.jsonl."""
    run_dir = Path(run_dir)
    config = _load_yaml(run_dir / "config.yaml") or {}
    info, summary = _load_json(run_dir / "run.json") or {}, _load_json(run_dir / "summary.json") or {}
    rows = read_metrics(run_dir) if not summary else []
    train, evals = _series(rows, "loss"), _series(rows, "eval_loss")
    steps = [r["step"] for r in rows if isinstance(r.get("step"), int)]
    created = info.get("created") or datetime.fromtimestamp(
        run_dir.stat().st_mtime, timezone.utc).isoformat(timespec="seconds")
    return {
        "name": run_dir.name,
        "base_model": info.get("base_model") or (config.get("model") or {}).get("name"),
        "method": info.get("method") or (config.get("method") or {}).get("name"),
        "steps": summary.get("steps", max(steps) if steps else None),
        "train_loss": summary.get("train_loss", train[1][-1] if train[1] else None),
        "eval_loss": summary.get("eval_loss", evals[1][-1] if evals[1] else None),
        "created": created,
    }


def list_runs(root: str | Path, sort: str = "created", desc: bool = False) -> list[dict[str, Any]]:
    """Summaries of every run folder directly under `root`, sorted by `sort` (missing values last)."""
    root = Path(root)
    if not root.is_dir():
        raise ReportError(f"{root}: no such folder")
    if sort not in RUN_COLUMNS:
        raise ReportError(f"cannot sort by {sort!r}; choose from {', '.join(RUN_COLUMNS)}")
    runs = [summarize_run(d) for d in sorted(root.iterdir())
            if d.is_dir() and any((d / m).is_file() for m in RUN_MARKERS)]
    present = [r for r in runs if r[sort] is not None]
    absent = [r for r in runs if r[sort] is None]
    # numbers compare as numbers, anything else as text
    present.sort(key=lambda r: (0, r[sort], "") if isinstance(r[sort], (int, float)) else (1, 0, str(r[sort])),
                 reverse=desc)
    return present + absent
