"""SwanLab tracker in offline mode: the run is stored under `<run>/swanlog`; `swanlab sync DIR` uploads it later."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import swanlab


def scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """The real-number entries of a metrics dict (bools, strings and None are not plottable)."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def plain(config: dict[str, Any]) -> dict[str, Any]:
    """The config as JSON types only (paths and enums become strings), which every backend accepts."""
    return json.loads(json.dumps(config, default=str))


class SwanLabTracker:
    """One SwanLab run per training run, named after the run folder, never touching the network."""

    def __init__(self, project: str = "tunelab", subdir: str = "swanlog"):
        self.project, self.subdir = project, subdir
        self._run = None

    def start(self, run_dir: Path, config: dict[str, Any]) -> None:
        run_dir = Path(run_dir)
        self._run = swanlab.init(project=self.project, name=run_dir.resolve().name, mode="offline",
                                 log_dir=str(run_dir / self.subdir), config=plain(config), reinit=True)

    def log(self, metrics: dict[str, float], step: int) -> None:
        values = scalars(metrics)
        if values:
            self._run.log(values, step=step)

    def finish(self) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None
