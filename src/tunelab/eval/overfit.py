"""Overfitting detection from a run's metrics.jsonl: validation loss climbing while training loss keeps falling.

That divergence, sustained over several evaluations, is the textbook sign that the model is
memorising the training set (Prechelt, "Early Stopping — But When?", 1998). A single uptick
of a noisy validation curve is not enough, hence `patience`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


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
