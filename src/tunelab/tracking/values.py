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
