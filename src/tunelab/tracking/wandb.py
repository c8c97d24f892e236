"""Weights & Biases tracker in offline mode: files under `<run>/wandb`; `wandb sync <run>/wandb/offline-run-*` uploads later."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import wandb

from tunelab.tracking.values import RunHandleTracker, plain


class WandbTracker(RunHandleTracker):
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
