"""Overfitting detection from a run's metrics.jsonl (see tunelab.tracking.overfit, where it lives so the
training loop's live watcher and the report share one rule)."""

from tunelab.tracking.overfit import Mark, OverfitWatcher, detect_overfitting

__all__ = ["Mark", "OverfitWatcher", "detect_overfitting"]
