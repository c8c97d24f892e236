"""The live overfitting watcher, fed synthetic metric streams the way the training loop logs them."""

from __future__ import annotations

import json

import pytest

from tunelab.eval.overfit import detect_overfitting
from tunelab.tracking import ALWAYS_ON, make_tracker
from tunelab.tracking.overfit import OverfitWatcher


def _stream(eval_losses, train_start=2.0, train_end=0.5, every=10, train_rises=False):
    """(metrics, step) pairs as fit() logs them: a train line per step, an eval line every `every` steps."""
    n = every * len(eval_losses)
    out = []
    for step in range(1, n + 1):
        frac = step / n
        loss = train_end + (train_start - train_end) * frac if train_rises else train_start - (train_start - train_end) * frac
        out.append(({"epoch": frac, "loss": loss, "lr": 1e-4, "tokens": 100 * step}, step))
        if step % every == 0:
            out.append(({"eval_loss": eval_losses[step // every - 1], "eval_ppl": 1.0}, step))
    return out


def _feed(run_dir, stream, patience=2):
    """Run a watcher over a stream; returns the warnings it printed."""
    said: list[str] = []
    watcher = OverfitWatcher(patience=patience, echo=said.append)
    watcher.start(run_dir, {})
    for metrics, step in stream:
        watcher.log(metrics, step)
    watcher.finish()
    return said


def test_warns_once_and_records_every_mark(tmp_path):
    evals = [2.0, 1.6, 1.3, 1.4, 1.5, 1.2, 1.1, 1.3, 1.45, 1.6]  # two rising streaks: steps 40-50, 80-100
    stream = _stream(evals)
    said = _feed(tmp_path, stream)
    rows = [{"step": s, **m} for m, s in stream]
    expected = detect_overfitting(rows, patience=2)
    assert [m.step for m in expected] == [50, 90]
    assert len(said) == 1 and said[0].startswith("possible overfitting at step 50: eval_loss rose 2 evaluations")
    saved = json.loads((tmp_path / "overfitting.json").read_text(encoding="utf-8"))
    assert saved["patience"] == 2
    assert [(m["step"], m["reason"]) for m in saved["marks"]] == [(m.step, m.reason) for m in expected]


def test_warning_appears_at_the_evaluation_that_completes_the_streak(tmp_path):
    said: list[str] = []
    watcher = OverfitWatcher(patience=3, echo=said.append)
    watcher.start(tmp_path, {})
    for metrics, step in _stream([2.0, 1.5, 1.6, 1.7, 1.8]):
        watcher.log(metrics, step)
        if step < 50:
            assert not said and not (tmp_path / "overfitting.json").exists()
    assert len(said) == 1 and "at step 50" in said[0]


@pytest.mark.parametrize("evals, train_rises", [
    ([2.0, 1.8, 1.6, 1.5, 1.45], False),       # both falling: healthy
    ([2.0, 1.8, 1.9, 1.85, 1.95], False),      # noisy, never two rises in a row
    ([1.0, 1.2, 1.4, 1.6, 1.8], True),         # both rising: divergence, not overfitting
])
def test_no_warning_without_overfitting(tmp_path, evals, train_rises):
    assert _feed(tmp_path, _stream(evals, train_rises=train_rises)) == []
    assert not (tmp_path / "overfitting.json").exists()


def test_default_warning_goes_to_stderr(tmp_path, capsys):
    watcher = make_tracker("overfit")
    assert isinstance(watcher, OverfitWatcher)
    watcher.start(tmp_path, {})
    for metrics, step in _stream([2.0, 1.5, 1.6, 1.7]):
        watcher.log(metrics, step)
    err = capsys.readouterr().err
    assert err.count("possible overfitting") == 1 and "step 40" in err


def test_always_added_by_the_training_recipe():
    assert ALWAYS_ON[0] == "jsonl" and "overfit" in ALWAYS_ON
    with pytest.raises(ValueError, match="patience must be >= 1"):
        OverfitWatcher(patience=0)


def test_setup_run_attaches_the_watcher(tmp_path, shared_data):
    from tunelab.config import build_config
    from tunelab.training.setup import setup_run

    cfg = build_config({"model": {"name": "tiny-llama"},
                        "data": {"train": str(shared_data / "fudan_news_val.jsonl")},
                        "method": {"name": "lora", "r": 2},
                        "output_dir": str(tmp_path / "r")}, "test")
    setup = setup_run(cfg, progress=False)
    try:
        watchers = [t for t in setup.trackers if isinstance(t, OverfitWatcher)]
        assert len(watchers) == 1 and watchers[0].run_dir == tmp_path / "r"
    finally:
        for t in setup.trackers:
            t.finish()
