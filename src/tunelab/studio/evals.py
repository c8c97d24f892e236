"""Evaluation against the base model, as queued jobs, and the eval tables of the Runs screen.

An eval job is `tunelab eval RUN --data FILE --compare base` in a worker subprocess, so the
numbers are exactly the CLI's and land where the CLI puts them: `RUN/eval/<data>-vs-base...json`.
The data is a library file, or the run's own validation data (`data.eval`, or the `val_size`
split of `data.train` rebuilt with the run's seed). Data the CLI cannot read as it is (a library
file with a saved column mapping, the split) is written in messages format to `jobs/<id>/`
first, so the job's command still reproduces it.

`run_evals` reads every `RUN/eval/*.json`; `compare_evals` lines up two runs' latest results
on the datasets both were evaluated on.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tunelab.studio.paths import Settings, StudioError, inside

DEFAULT_METRICS = ("exact_match", "contains")
CLI_MAIN = "import sys; sys.argv[0] = 'tunelab'; from tunelab.cli import main; main()"


# ---- the job ----------------------------------------------------------------------------------
def check_options(metrics: list[str], limit: int | None, max_new_tokens: int) -> None:
    """Refuse unknown metrics and out-of-range numbers before anything is queued."""
    from tunelab.eval.evaluate import ALL_METRICS

    unknown = [m for m in metrics if m not in ALL_METRICS]
    if not metrics or unknown:
        raise StudioError(f"metrics: unknown {', '.join(map(repr, unknown)) or '(none given)'}; "
                          f"choose from {', '.join(ALL_METRICS)}")
    if limit is not None and limit < 1:
        raise StudioError(f"limit: must be a positive number of records or null for all (got {limit})")
    if not 1 <= max_new_tokens <= 1024:
        raise StudioError(f"max_new_tokens: must be 1..1024 (got {max_new_tokens})")


def _library_file(settings: Settings, rel: str, key: str) -> Path:
    """A data path from a run's config (relative to the data dir), refused unless it is in the library."""
    path = inside(settings.data_dir / rel, [settings.datasets], f"{key} of the run", repr(rel))
    if not path.is_file():
        raise StudioError(f"{key} of the run ({rel}) is no longer in the library; choose a dataset to evaluate on")
    return path


def _write_messages(convs: list, dst: Path) -> None:
    from tunelab.data.convert import to_messages
    from tunelab.utils.io import atomic_write_jsonl

    atomic_write_jsonl(dst, [to_messages(c, c.meta.get("where", "")) for c in convs])


def _validation(settings: Settings, run_dir: Path, stage: Path) -> str | Path:
    """The run's validation data: its data.eval file, or the val_size split rebuilt exactly as training did."""
    from tunelab.data.pipeline import (
        load_conversations,
        load_train,
        split_conversations,
    )
    from tunelab.run import Run

    cfg = Run(run_dir).config
    data = cfg.data
    sources = data.sources()
    if len(sources) > 1:  # each task has its own validation; one eval job scores one file
        raise StudioError(f"run {run_dir.name!r} trains {len(sources)} tasks, each with its own validation data; "
                          "choose a dataset, or score every task with `tunelab eval RUN --data TASK=FILE ...`")
    eval_file = data.eval or getattr(sources[0], "eval", None)
    if eval_file:
        key = "data.eval" if data.eval else "data.train[0].eval"
        path = _library_file(settings, eval_file, key)
        columns = sources[0].columns or data.columns
        if not columns:
            return eval_file
        convs, _ = load_conversations(str(path), sources[0].format or data.format, columns)
        dst = stage / f"{run_dir.name}.validation.jsonl"
        _write_messages(convs, dst)
        return dst
    sources = [s.model_copy(update={"path": str(_library_file(settings, s.path, "data.train"))})
               for s in sources]
    absolute = data.model_copy(update={"train": sources[0].path if isinstance(data.train, str) else sources})
    if data.streaming:  # the first val_records records, which the training stream skipped
        val = load_train(absolute, cfg.train.seed, None)[0][:data.val_records]
    else:
        val = split_conversations(absolute, cfg.train.seed)[1]
    if not val:
        raise StudioError(f"run {run_dir.name!r} has no validation data (data.eval unset and val_size/val_records "
                          "0); choose a dataset to evaluate on")
    dst = stage / f"{run_dir.name}.validation.jsonl"
    _write_messages(val, dst)
    return dst


def _dataset(settings: Settings, name: str, stage: Path) -> str | Path:
    """A library file as `tunelab eval` reads it: its own path, or mapped to standard names when it has a mapping."""
    from tunelab.data.pipeline import load_conversations
    from tunelab.studio.datasets import dataset_path, saved_columns

    path = dataset_path(settings, name)
    columns = saved_columns(settings, name)
    if not columns:
        return str(path.relative_to(settings.data_dir))
    convs, _ = load_conversations(str(path), "auto", columns)
    dst = stage / f"{path.stem}.jsonl"
    _write_messages(convs, dst)
    return dst


def stage_data(settings: Settings, run_dir: Path, dataset: str | None) -> tuple[Path, str | Path]:
    """(staging folder, data) for an eval job; data is a path relative to the data dir or a file in staging."""
    stage = Path(tempfile.mkdtemp(prefix=".staging-", dir=settings.jobs))
    try:
        data = _dataset(settings, dataset, stage) if dataset else _validation(settings, run_dir, stage)
    except Exception:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return stage, data


def make_spec(run_dir: Path, data: str, metrics: list[str], limit: int | None, max_new_tokens: int,
              dataset: str | None) -> dict[str, Any]:
    """What an eval job runs (stored as the job's YAML)."""
    return {"run": f"runs/{run_dir.name}", "data": data, "compare": "base", "metrics": list(metrics),
            "limit": limit, "max_new_tokens": max_new_tokens,
            "source": f"datasets/{dataset}" if dataset else "validation data of the run"}


def eval_args(spec: dict[str, Any]) -> list[str]:
    """`tunelab eval` arguments of a spec (paths relative to the data dir, the worker's cwd)."""
    args = ["eval", spec["run"], "--data", spec["data"], "--compare", spec["compare"],
            "--metrics", ",".join(spec["metrics"]), "--max-new-tokens", str(spec["max_new_tokens"])]
    return args + (["--limit", str(spec["limit"])] if spec.get("limit") else [])


def eval_command(spec: dict[str, Any], run_dir: Path) -> list[str]:
    """The worker command line; the run folder is given absolute so a restarted studio can recognise the worker."""
    args = eval_args(spec)
    args[1] = str(run_dir)
    return [sys.executable, "-c", CLI_MAIN, *args]


def cli_command(settings: Settings, spec: dict[str, Any]) -> str:
    """The shell command that reproduces an eval job."""
    import shlex

    return f"cd {settings.data_dir} && tunelab {shlex.join(eval_args(spec))}"


# ---- the tables -------------------------------------------------------------------------------
def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _scalars(metrics: Any) -> dict[str, float]:
    return {k: v for k, v in (metrics or {}).items() if _number(v) and k != "n"} if isinstance(metrics, dict) else {}


def dataset_label(data: str | list) -> str:
    """What an eval was run on, as the tables name it: the data file's stem (`datasets/identity.json` -> identity);
    several files (one per task) are joined with '+'."""
    if isinstance(data, list):
        return "+".join(Path(str(d)).stem for d in data)
    return Path(str(data)).stem


def eval_notes(metrics: Any) -> list[str]:
    """The caveats an eval result carries next to its numbers: `note`, or `<task>/note` with several tasks
    (e.g. "references are short ...: loss/perplexity reflect the reference wording"), task-prefixed."""
    if not isinstance(metrics, dict):
        return []
    return [note if key == "note" else f"{key.removesuffix('/note')}: {note}" for key, note in metrics.items()
            if (key == "note" or key.endswith("/note")) and isinstance(note, str) and note.strip()]


def read_eval(path: Path) -> dict[str, Any]:
    """One eval/*.json as a table: {file, dataset, data, n, created, metrics, settings, compare, rows, notes}."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return {"file": path.name, "error": f"eval/{path.name}: unreadable ({e}); delete or rewrite it"}
    if not isinstance(obj, dict) or not isinstance(obj.get("metrics"), dict):
        return {"file": path.name, "error": f"eval/{path.name}: no 'metrics' object; not a tunelab eval result"}
    metrics = _scalars(obj["metrics"])
    compare = obj.get("compare") if isinstance(obj.get("compare"), dict) else None
    other = _scalars(compare.get("metrics")) if compare else {}
    deltas = _scalars(compare.get("deltas")) if compare else {}
    rows = [{"metric": k, "run": v, "other": other.get(k), "delta": deltas.get(k)} for k, v in metrics.items()]
    return {"file": path.name, "dataset": dataset_label(obj.get("data", path.stem)), "data": obj.get("data"),
            "n": obj.get("n"), "settings": obj.get("settings", {}),
            "created": datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).isoformat(timespec="seconds"),
            "metrics": metrics, "compare": str(compare.get("name", "other")) if compare else None, "rows": rows,
            "notes": eval_notes(obj["metrics"])}


def run_evals(run_dir: Path) -> list[dict[str, Any]]:
    """Every eval result of a run, oldest first (unreadable files are listed with an `error`)."""
    folder = run_dir / "eval"
    files = sorted(folder.glob("*.json"), key=lambda p: (p.stat().st_mtime, p.name)) if folder.is_dir() else []
    return [read_eval(p) for p in files]


def latest_by_dataset(evals: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The newest readable result per dataset label."""
    return {e["dataset"]: e for e in evals if "error" not in e}


def compare_evals(a_dir: Path, b_dir: Path) -> dict[str, Any]:
    """Side by side: for each dataset both runs were evaluated on, every metric both have, with b - a."""
    a, b = latest_by_dataset(run_evals(a_dir)), latest_by_dataset(run_evals(b_dir))
    shared = [d for d in a if d in b]
    tables = []
    for d in shared:
        ma, mb = a[d]["metrics"], b[d]["metrics"]
        rows = [{"metric": k, "a": ma[k], "b": mb[k], "diff": mb[k] - ma[k]} for k in ma if k in mb]
        tables.append({"dataset": d, "a_file": a[d]["file"], "b_file": b[d]["file"], "a_n": a[d]["n"],
                       "b_n": b[d]["n"], "rows": rows})
    return {"a": a_dir.name, "b": b_dir.name, "datasets": tables,
            "only_a": [d for d in a if d not in b], "only_b": [d for d in b if d not in a]}


def result_of(run_dir: Path, since: float | None) -> str | None:
    """The newest eval/*.json written at or after `since` (an eval job's own result), or None."""
    folder = run_dir / "eval"
    if not folder.is_dir():
        return None
    new = [p for p in folder.glob("*.json") if since is None or p.stat().st_mtime >= since - 1]
    return max(new, key=lambda p: p.stat().st_mtime).name if new else None


def require_weights(run_dir: Path) -> None:
    """An eval needs trained weights; refuse a run that has none yet."""
    if not any((run_dir / d).is_dir() for d in ("adapter", "model")):
        raise StudioError(f"run {run_dir.name!r} has no trained weights yet (no adapter/ or model/); "
                       "wait for its training job to finish")
