"""Weights & Biases tracker in offline mode: files under `<run>/wandb`; `wandb sync <run>/wandb/offline-run-*` uploads later."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import wandb


def scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """The real-number entries of a metrics dict (bools, strings and None are not plottable)."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def plain(config: dict[str, Any]) -> dict[str, Any]:
    """The config as JSON types only (paths and enums become strings), which every backend accepts."""
    return json.loads(json.dumps(config, default=str))


class WandbTracker:
    """One offline W&B run per training run, named after the run folder; no account or network needed."""

    def __init__(self, project: str = "tunelab"):
        self.project = project
        self._run = None

    def start(self, run_dir: Path, config: dict[str, Any]) -> None:
        run_dir = Path(run_dir)
        # mode="offline" is what WANDB_MODE=offline sets; passing it keeps the process environment untouched
        self._run = wandb.init(project=self.project, name=run_dir.resolve().name, dir=str(run_dir),
                               config=plain(config), mode="offline", reinit="create_new",
                               settings=wandb.Settings(silent=True, console="off"))

    def log(self, metrics: dict[str, float], step: int) -> None:
        values = scalars(metrics)
        if values:
            self._run.log(values, step=step)

    def finish(self) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None
