"""What a job is doing now, read from its log and run folder: progress, ETA, throughput, memory, the fast paths
in use, the overfitting warning, the evaluation phase; and a finished run's evidence (base vs tuned).

Everything is parsed from files the CLI writes anyway (`train.log`/`eval.log`, `metrics.jsonl`,
`eval/*.json` and their predictions), so a job started from the command line reads the same way.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tunelab.runfolder import RunFolder

_STEP = re.compile(r"^step (\d+)/(\d+)\s+(.*?)\s+ETA ([\d,]+)s\s*$")
_TPS = re.compile(r"([\d,]+) tok/s")
_MEM = re.compile(r"([\d.]+) GiB")
_EVAL_PHASE = re.compile(r"^eval (\d)/(\d): (.*)$")


def _lines(log: str) -> list[str]:
    return [line.strip() for line in log.splitlines() if line.strip()]


def train_progress(log: str, metrics: list[dict[str, Any]], status: str) -> dict[str, Any]:
    """Step, total, percent, ETA, tokens/s, memory, fast paths and phase of a training job (None = not yet known).

    Memory is the GPU's peak when the run is on CUDA (metrics carry `mem_gib`), else the worker's RSS as its
    progress line prints it. The phase says `evaluating` between the last step and the `done:` line, so the
    final evaluation never looks like a hang.
    """
    out: dict[str, Any] = {"step": None, "total": None, "percent": None, "eta_s": None, "tokens_per_s": None,
                           "memory_gib": None, "memory_kind": None, "speed_on": [], "speed_off": {},
                           "phase": status, "done_line": None}
    lines = _lines(log)
    for line in lines:
        if line.startswith("speed: "):
            on, _, off = line.removeprefix("speed: ").partition("; off: ")
            out["speed_on"] = [] if on == "no fast path" else [s.strip() for s in on.split(",")]
            out["speed_off"] = dict(re.findall(r"(\w+) \(([^)]*)\)", off))
        elif line.startswith("done: "):
            out["done_line"] = line
    last = next((m for line in reversed(lines) if (m := _STEP.match(line))), None)
    if last:
        step, total, info, eta = int(last[1]), int(last[2]), last[3], int(last[4].replace(",", ""))
        out.update(step=step, total=total, percent=round(100.0 * step / max(total, 1), 1), eta_s=eta)
        if tps := _TPS.search(info):
            out["tokens_per_s"] = float(tps[1].replace(",", ""))
        if mem := _MEM.search(info):
            out["memory_gib"] = float(mem[1])
    cuda = next((m["mem_gib"] for m in reversed(metrics) if "mem_gib" in m), None)
    if cuda is not None:
        out["memory_gib"], out["memory_kind"] = round(float(cuda), 3), "GPU peak"
    elif out["memory_gib"] is not None:
        out["memory_kind"] = "CPU RSS"
    if status == "running":
        if out["step"] is None:
            out["phase"] = "loading model and data"
        elif out["step"] == out["total"] and out["done_line"] is None:
            out["phase"] = "final evaluation and saving"
        else:
            out["phase"] = "training"
    return out


def eval_progress(log: str, status: str) -> dict[str, Any]:
    """Which phase an eval job is in (`eval 1/2: scoring the run ...`), as a fraction of its phases."""
    phase = next((m for line in reversed(_lines(log)) if (m := _EVAL_PHASE.match(line))), None)
    if phase is None:
        return {"phase": "loading" if status == "running" else status, "done": 0, "total": None}
    return {"phase": phase[3], "done": int(phase[1]) - 1 if status != "completed" else int(phase[2]),
            "total": int(phase[2])}


def overfitting(metrics: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The first overfitting mark in the metrics so far (tunelab.tracking.overfit), or None."""
    from tunelab.tracking.overfit import detect_overfitting

    try:
        marks = detect_overfitting(metrics)
    except ValueError:
        return None
    return {"step": marks[0].step, "reason": marks[0].reason} if marks else None


def evidence(run_dir: Path, n_answers: int = 5) -> dict[str, Any]:
    """The newest eval against another system (base) with its metrics and deltas, and a few answers side by side."""
    from tunelab.studio.evals import read_eval

    folder = RunFolder(run_dir)
    results = sorted(folder.eval_results(), key=lambda p: (p.stat().st_mtime, p.name))
    compared = [p for p in results if read_eval(p).get("compare")]
    if not compared:
        return {"eval": read_eval(results[-1]) if results else None, "answers": []}
    newest = compared[-1]
    answers = []
    preds = RunFolder.predictions_path(newest)
    if preds.is_file():
        with preds.open(encoding="utf-8") as f:
            for line in f:
                if len(answers) >= n_answers:
                    break
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(row, dict):
                    prompt = row.get("prompt")
                    if isinstance(prompt, list):  # chat messages: show the last user turn
                        prompt = next((m.get("content") for m in reversed(prompt) if isinstance(m, dict)
                                       and m.get("role") == "user"), "")
                    answers.append({"prompt": str(prompt or ""), "reference": str(row.get("reference") or ""),
                                    "tuned": str(row.get("prediction") or ""),
                                    "other": str(row.get("compare_prediction") or "")})
    return {"eval": read_eval(newest), "answers": answers}
