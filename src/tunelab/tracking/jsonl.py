"""The always-on tracker: one JSON object per logged step in the run's metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunelab.utils.io import DiskFullError, is_disk_full


class JsonlTracker:
    """Appends `{"step": N, ...metrics}` lines to metrics.jsonl, flushed at once so a crash loses nothing."""

    def __init__(self, filename: str = "metrics.jsonl"):
        self.filename = filename
        self._f = None
        self._path: Path | None = None

    def start(self, run_dir: Path, config: dict[str, Any]) -> None:
        self._path = Path(run_dir) / self.filename
        self._f = open(self._path, "a", encoding="utf-8")

    def log(self, metrics: dict[str, float], step: int) -> None:
        try:
            self._f.write(json.dumps({"step": step, **metrics}, ensure_ascii=False) + "\n")
            self._f.flush()
        except OSError as e:
            if is_disk_full(e):
                raise DiskFullError(self._path) from e
            raise

    def finish(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
