"""Shaping values for tracker backends (no third-party imports, so every backend can share it)."""

from __future__ import annotations

import json
from typing import Any


def scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """The real-number entries of a metrics dict (bools, strings and None are not plottable)."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def plain(config: dict[str, Any]) -> dict[str, Any]:
    """The config as JSON types only (paths and enums become strings), which every backend accepts."""
    return json.loads(json.dumps(config, default=str))


class RunHandleTracker:
    """Shared log/finish for backends whose `init` returns a run handle with `.log(values, step=)` and `.finish()`."""

    _run = None

    def log(self, metrics: dict[str, float], step: int) -> None:
        values = scalars(metrics)
        if values:
            self._run.log(values, step=step)

    def finish(self) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None

