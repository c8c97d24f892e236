"""Overfitting detection on synthetic training curves."""

from __future__ import annotations

import math
import random

import pytest

from tunelab.eval.overfit import Mark, detect_overfitting


def _curve(eval_losses, train_start=2.0, train_end=0.5, every=10, noise=0.0, seed=0):
    """metrics.jsonl rows: a train row per step (falling linearly), an eval row every `every` steps."""
    rng = random.Random(seed)
    n = every * len(eval_losses)
    rows = []
    for step in range(1, n + 1):
        loss = train_start + (train_end - train_start) * step / n + rng.uniform(-noise, noise)
        rows.append({"step": step, "epoch": step / n, "loss": loss, "lr": 1e-4})
        if step % every == 0:
            e = eval_losses[step // every - 1]
            rows.append({"step": step, "eval_loss": e, "eval_ppl": math.exp(e)})
    return rows


def test_clear_overfit_is_marked_once_at_the_right_step():
    rows = _curve([2.0, 1.6, 1.3, 1.2, 1.25, 1.35, 1.5, 1.7])
    marks = detect_overfitting(rows, patience=2)
    assert [m.step for m in marks] == [60]  # rises at steps 50 and 60: the second completes the streak
    (m,) = marks
    assert isinstance(m, Mark) and m.eval_loss == 1.35
    assert "rose 2 evaluations in a row" in m.reason and "best eval_loss 1.2 at step 40" in m.reason
    assert "steps 40–60" in m.reason
    # smoothed train loss is the mean over steps 51..60 of the linear curve
    assert m.train_loss == pytest.approx(2.0 - 1.5 * 55.5 / 80)


def test_patience_three_marks_later():
    rows = _curve([2.0, 1.6, 1.3, 1.2, 1.25, 1.35, 1.5, 1.7])
    assert [m.step for m in detect_overfitting(rows, patience=3)] == [70]


def test_noisy_but_fine_curve_has_no_marks():
    # validation wiggles up and down (never two rises in a row) on a downward trend
    evals = [2.0, 1.8, 1.85, 1.6, 1.65, 1.5, 1.52, 1.4, 1.45, 1.3]
    assert detect_overfitting(_curve(evals, noise=0.3, seed=1), patience=2) == []


def test_rising_eval_with_rising_train_is_not_overfitting():
    # both curves go up: divergence, not overfitting (e.g. a too-high learning rate)
    rows = _curve([1.0, 1.1, 1.2, 1.3], train_start=0.5, train_end=2.0)
    assert detect_overfitting(rows) == []


def test_min_delta_ignores_tiny_rises():
    rows = _curve([2.0, 1.5, 1.501, 1.502, 1.503])
    assert [m.step for m in detect_overfitting(rows)] == [40]
    assert detect_overfitting(rows, min_delta=0.01) == []


def test_too_few_evals_and_bad_input():
    assert detect_overfitting(_curve([2.0, 2.5])) == []
    assert detect_overfitting([]) == []
    assert detect_overfitting([{"step": 1, "loss": 1.0}]) == []
    with pytest.raises(ValueError, match="metrics row 2: needs an integer 'step'"):
        detect_overfitting([{"step": 1, "loss": 1.0}, {"loss": 2.0}])
    with pytest.raises(ValueError, match="patience must be >= 1"):
        detect_overfitting([], patience=0)
