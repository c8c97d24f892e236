"""Experiment trackers behind one interface: jsonl (always on), tensorboard, swanlab, wandb, mlflow.

A tracker receives the resolved config once, then metric dicts keyed by step, then finish().
Backends are imported lazily so a missing optional package only matters when it is asked for.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Protocol


class Tracker(Protocol):
    """What the engine calls; every backend implements these three methods."""

    def start(self, run_dir: Path, config: dict[str, Any]) -> None: ...

    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def finish(self) -> None: ...


# name -> "module:Class"; a backend module may import its package at module level.
TRACKERS: dict[str, str] = {
    "jsonl": "tunelab.tracking.jsonl:JsonlTracker",
    "tensorboard": "tunelab.tracking.tensorboard:TensorBoardTracker",
    "swanlab": "tunelab.tracking.swanlab:SwanLabTracker",
    "wandb": "tunelab.tracking.wandb:WandbTracker",
    "mlflow": "tunelab.tracking.mlflow:MlflowTracker",
    "overfit": "tunelab.tracking.overfit:OverfitWatcher",
}
# added to every run by the training recipe, before the user's train.report_to
ALWAYS_ON: tuple[str, ...] = ("jsonl", "overfit")


_EXTRA: ContextVar[tuple] = ContextVar("tunelab_extra_trackers", default=())


@contextmanager
def extra_trackers(*trackers: Tracker) -> Iterator[None]:
    """Add tracker objects to every run started inside this block (in this thread), after the configured ones.

    How a caller that runs training in-process watches it live without a config key: the sweep's pruning
    watcher is one (its ``log`` may raise to stop the run). Outside the block no run sees them.
    """
    token = _EXTRA.set(_EXTRA.get() + trackers)
    try:
        yield
    finally:
        _EXTRA.reset(token)


def active_extra_trackers() -> list[Tracker]:
    """The trackers added by the enclosing `extra_trackers` blocks (none outside them)."""
    return list(_EXTRA.get())


class MissingExtra(ImportError):
    """An optional backend's package is not installed; the message names the pip command."""


def make_tracker(name: str) -> Tracker:
    """Instantiate a tracker by name, with a clear error for unknown names or missing packages."""
    if name not in TRACKERS:
        raise ValueError(f"report_to: unknown tracker {name!r}; choose from {', '.join(TRACKERS)}")
    module, _, cls = TRACKERS[name].partition(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("tunelab"):
            raise
        raise MissingExtra(f"report_to: {name} needs the package {e.name!r}; "
                           f"install it with `pip install 'tunelab[track]'`") from None
    return getattr(mod, cls)()
