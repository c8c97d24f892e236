"""The always-on tracker: one JSON object per logged step in the run's metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class JsonlTracker:
    """Appends `{"step": N, ...metrics}` lines to metrics.jsonl, flushed at once so a crash loses nothing."""

    def __init__(self, filename: str = "metrics.jsonl"):
        self.filename = filename
        self._f = None

    def start(self, run_dir: Path, config: dict[str, Any]) -> None:
        self._f = open(Path(run_dir) / self.filename, "a", encoding="utf-8")

    def log(self, metrics: dict[str, float], step: int) -> None:
        self._f.write(json.dumps({"step": step, **metrics}, ensure_ascii=False) + "\n")
        self._f.flush()

    def finish(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
