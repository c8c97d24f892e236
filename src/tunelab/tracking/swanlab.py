"""SwanLab tracker in offline mode: the run is stored under `<run>/swanlog`; `swanlab sync DIR` uploads it later."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import swanlab

from tunelab.tracking.values import RunHandleTracker, plain


class SwanLabTracker(RunHandleTracker):
    """One SwanLab run per training run, named after the run folder, never touching the network."""

    def __init__(self, project: str = "tunelab", subdir: str = "swanlog"):
        self.project, self.subdir = project, subdir
        self._run = None

    def start(self, run_dir: Path, config: dict[str, Any]) -> None:
        run_dir = Path(run_dir)
        self._run = swanlab.init(project=self.project, name=run_dir.resolve().name, mode="offline",
                                 log_dir=str(run_dir / self.subdir), config=plain(config), reinit=True)
