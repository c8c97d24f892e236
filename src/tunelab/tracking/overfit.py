"""Overfitting detection: validation loss climbing while training loss keeps falling, after the run or live.

That divergence, sustained over several evaluations, is the textbook sign that the model is
memorising the training set (Prechelt, "Early Stopping — But When?", 1998). A single uptick
of a noisy validation curve is not enough, hence `patience`.

`detect_overfitting` reads finished metrics rows (the report uses it); `OverfitWatcher` is a
tracker the training recipe always adds, so the warning appears while training runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from tunelab.utils.io import atomic_write_json


@dataclass(frozen=True)
class Mark:
    """An evaluation step where overfitting set in, and why we think so."""

    step: int
    reason: str
    eval_loss: float
    train_loss: float


def _number(row: dict[str, Any], key: str) -> float | None:
    value = row.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)


def _split(records: Sequence[dict[str, Any]]) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(step, train loss) and (step, eval loss) pairs, each sorted by step."""
    train, evals = [], []
    for i, row in enumerate(records):
        if not isinstance(row, dict) or not isinstance(row.get("step"), int):
            raise ValueError(f"metrics row {i + 1}: needs an integer 'step' (got {row!r:.80})")
        if (loss := _number(row, "eval_loss")) is not None:
            evals.append((row["step"], loss))
        if (loss := _number(row, "loss")) is not None:
            train.append((row["step"], loss))
    return sorted(train), sorted(evals)


def _smoothed_train(train: list[tuple[int, float]], lo: float, hi: int) -> float | None:
    """Mean training loss over steps in (lo, hi]: the training curve between two evaluations."""
    window = [loss for step, loss in train if lo < step <= hi]
    return sum(window) / len(window) if window else None


def detect_overfitting(records: Sequence[dict[str, Any]], patience: int = 2,
                       min_delta: float = 0.0) -> list[Mark]:
    """Find evaluations where eval_loss rose `patience` times in a row while smoothed train loss fell.

    `records` are metrics.jsonl rows (train rows carry "loss", eval rows "eval_loss").
    The training loss is averaged over the steps leading up to each evaluation, so its noise
    does not matter; a rise must exceed `min_delta` to count. One Mark per rising streak, at
    the first evaluation where the streak has reached `patience` and the training loss fell. Too few evaluations -> [].
    """
    if patience < 1:
        raise ValueError(f"patience must be >= 1 (got {patience})")
    train, evals = _split(records)
    # smoothed train loss "at" evaluation j: mean over (previous eval step, this eval step]
    bounds = [-math.inf] + [step for step, _ in evals]
    smooth = [_smoothed_train(train, bounds[j], evals[j][0]) for j in range(len(evals))]
    marks: list[Mark] = []
    streak, marked = 0, False
    for i in range(1, len(evals)):
        rose = evals[i][1] > evals[i - 1][1] + min_delta
        streak, marked = (streak + 1, marked) if rose else (0, False)
        if streak < patience or marked:
            continue
        start = i - patience
        t0, t1 = smooth[start], smooth[i]
        if t0 is None or t1 is None or not t1 < t0:
            continue
        best_step, best = min(evals[: i + 1], key=lambda e: e[1])
        losses = " → ".join(f"{loss:.4g}" for _, loss in evals[start: i + 1])
        reason = (f"eval_loss rose {patience} evaluations in a row ({losses}, steps {evals[start][0]}–"
                  f"{evals[i][0]}) while the smoothed training loss fell ({t0:.4g} → {t1:.4g}); "
                  f"best eval_loss {best:.4g} at step {best_step}")
        marked = True
        marks.append(Mark(step=evals[i][0], reason=reason, eval_loss=evals[i][1], train_loss=t1))
    return marks


class OverfitWatcher:
    """Tracker that watches train/eval losses as they are logged and flags overfitting the moment it shows.

    On each evaluation it runs `detect_overfitting` over everything logged so far. The first
    mark prints one warning to stderr; every mark is recorded in `<run>/overfitting.json`
    ({"patience", "min_delta", "marks": [{step, reason, eval_loss, train_loss}]}), written
    atomically so a dashboard can poll it. It never stops training: early stopping is
    train.early_stopping_patience's job.
    """

    FILENAME = "overfitting.json"

    def __init__(self, patience: int = 2, min_delta: float = 0.0, echo: Callable[[str], None] | None = None):
        if patience < 1:
            raise ValueError(f"patience must be >= 1 (got {patience})")
        self.patience, self.min_delta = patience, min_delta
        self.rows: list[dict[str, Any]] = []
        self.marks: list[Mark] = []
        self.warned = False
        self.run_dir: Path | None = None
        self._echo = echo

    def start(self, run_dir: Path, config: dict[str, Any]) -> None:
        self.run_dir = Path(run_dir)

    def log(self, metrics: dict[str, float], step: int) -> None:
        row = {"step": step, **{k: metrics[k] for k in ("loss", "eval_loss") if k in metrics}}
        if len(row) == 1:
            return
        self.rows.append(row)
        if "eval_loss" not in row:
            return
        known = {m.step for m in self.marks}
        new = [m for m in detect_overfitting(self.rows, self.patience, self.min_delta) if m.step not in known]
        if not new:
            return
        self.marks.extend(new)
        if not self.warned:
            self.warned = True
            self._warn(f"possible overfitting at step {new[0].step}: {new[0].reason}")
        self._save()

    def _warn(self, text: str) -> None:
        if self._echo is not None:
            self._echo(text)
            return
        Console(stderr=True).print(f"[yellow bold]warning:[/] {escape(text)}", highlight=False)

    def _save(self) -> None:
        if self.run_dir is None:
            return
        atomic_write_json(self.run_dir / self.FILENAME, {"patience": self.patience, "min_delta": self.min_delta,
                                                         "marks": [asdict(m) for m in self.marks]})

    def finish(self) -> None:
        pass
