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

from tunelab.data.io import DataError
from tunelab.eval.overfit import Mark, detect_overfitting
from tunelab.runfolder import (
    CONFIG_FILE,
    EVAL_DIR,
    MARKERS,
    METRICS_FILE,
    RUN_INFO_FILE,
    SUMMARY_FILE,
    RunFileError,
    RunFolder,
    read_json_object,
    read_jsonl,
)
from tunelab.utils.io import atomic_write_text

TEMPLATES = Path(__file__).parent / "templates"
N_SAMPLES = 5  # predictions shown per eval file
RUN_MARKERS = MARKERS
RUN_COLUMNS = ("name", "base_model", "method", "steps", "train_loss", "eval_loss", "created")


class ReportError(ValueError):
    """The folder is not a run folder or one of its files is unreadable; the message names it."""


def _read(read, *args, error: type[ValueError] = ReportError):
    """A run-folder read (tunelab.runfolder); its RunFileError becomes `error` (the message names the file).

    JSON/YAML files report a ReportError; JSONL rows a DataError, as every other record file does.
    """
    try:
        return read(*args)
    except RunFileError as e:
        raise error(str(e)) from None


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of `<run>/metrics.jsonl` ([] when absent); a bad line raises naming file:line."""
    return _read(RunFolder(run_dir).read_metrics, error=DataError)


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
    for path in RunFolder(run_dir).eval_results():
        obj = _read(read_json_object, path) or {}
        metrics = _flatten(obj.get("metrics", {}))
        notes = {k: metrics.pop(k) for k in [k for k in metrics if k == "note" or k.endswith("/note")]}
        preds_path = RunFolder.predictions_path(path)
        samples = _read(read_jsonl, preds_path, error=DataError)[:N_SAMPLES]
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
    folder = RunFolder(run_dir)
    if not folder.has_marker():
        raise ReportError(f"{run_dir}: not a run folder (none of {', '.join(RUN_MARKERS)}); "
                          "pass the folder `tunelab train` wrote, e.g. runs/<name>")
    config, run_info = _read(folder.read_config_dict), _read(folder.read_info)
    summary, rows = _read(folder.read_summary), read_metrics(run_dir)
    marks = detect_overfitting(rows)
    plots = _plots(rows, marks)
    evals = _evals(run_dir) if folder.eval_dir.is_dir() else []
    missing = [f"{name}: {why}" for name, present, why in (
        (CONFIG_FILE, config is not None, "no config summary"),
        (RUN_INFO_FILE, run_info is not None, "base model, parameter counts and creation time unknown"),
        (METRICS_FILE, bool(rows), "no training curves"),
        (SUMMARY_FILE, summary is not None, "the run may still be running or was interrupted"),
        ("validation loss", "loss" in plots and any("eval_loss" in r for r in rows),
         f"no eval rows in {METRICS_FILE} (set train.eval_every and data.eval or data.val_size)"),
        (f"{EVAL_DIR}/", bool(evals),
         "no evaluation results; run `tunelab eval RUN_DIR --data FILE [--compare base]` to add them"),
    ) if not present]
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True)
    env.filters["fmt"] = _fmt
    html = env.get_template("report.html.jinja").render(
        name=run_dir.resolve().name, config=_flatten(config or {}), run_info=run_info or {},
        summary=summary or {}, plots=plots, marks=marks, evals=evals, missing=missing,
        generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"))
    return atomic_write_text(folder.report_path, html)


def summarize_run(run_dir: str | Path) -> dict[str, Any]:
    """One row of `tunelab runs`: summary.json first, then run.json/config.yaml, then metrics.jsonl."""
    run_dir, folder = Path(run_dir), RunFolder(run_dir)
    config = _read(folder.read_config_dict) or {}
    info, summary = _read(folder.read_info) or {}, _read(folder.read_summary) or {}
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


def find_run_dirs(root: Path, max_depth: int = 4) -> list[Path]:
    """Run folders under `root` at any depth up to `max_depth` (runs/project/exp1/...), in path order; a run's own
    subfolders (checkpoints, exports) are not searched, nor hidden folders or symlinked ones (no loops)."""
    found: list[Path] = []

    def walk(folder: Path, depth: int) -> None:
        for d in sorted(folder.iterdir()):
            if not d.is_dir() or d.is_symlink() or d.name.startswith("."):
                continue
            if RunFolder(d).has_marker():
                found.append(d)
            elif depth < max_depth:
                walk(d, depth + 1)

    walk(root, 1)
    return found


def list_runs(root: str | Path, sort: str = "created", desc: bool = False) -> list[dict[str, Any]]:
    """Summaries of every run folder under `root` (nested ones too, named by their path below `root`), sorted
    by `sort` (missing values last)."""
    root = Path(root)
    if not root.is_dir():
        raise ReportError(f"{root}: no such folder")
    if sort not in RUN_COLUMNS:
        raise ReportError(f"cannot sort by {sort!r}; choose from {', '.join(RUN_COLUMNS)}")
    runs = [{**summarize_run(d), "name": d.relative_to(root).as_posix()} for d in find_run_dirs(root)]
    present = [r for r in runs if r[sort] is not None]
    absent = [r for r in runs if r[sort] is None]
    # numbers compare as numbers, anything else as text
    present.sort(key=lambda r: (0, r[sort], "") if isinstance(r[sort], (int, float)) else (1, 0, str(r[sort])),
                 reverse=desc)
    return present + absent
