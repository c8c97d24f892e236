"""Regression data: ``{"text": str, "value": number}`` records (``label`` is read as the value when numeric)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from tunelab.data.io import DataError, read_records


@dataclass
class RegressionExample:
    """A text and the number to predict for it."""

    text: str
    value: float
    where: str = ""


def load_regression(path: str | Path) -> list[RegressionExample]:
    """Every record of a .json/.jsonl file as (text, value); a bad record names its file and line."""
    out = []
    for rec in read_records(path):
        text, value = rec.data.get("text"), rec.data.get("value", rec.data.get("label"))
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{rec.where}: 'text' must be a non-empty string")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise DataError(f"{rec.where}: 'value' must be a finite number (got {value!r:.40}); a regression "
                            "record is {\"text\": ..., \"value\": 3.5}")
        out.append(RegressionExample(text, float(value), rec.where))
    if not out:
        raise DataError(f"{path}: no records")
    return out
