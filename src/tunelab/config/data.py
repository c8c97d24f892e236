"""The `data:` section of a run config."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tunelab.config.base import Section


class DataCfg(Section):
    train: str = Field(..., description="Training data file (JSON array or JSONL).")
    eval: str | None = Field(None, description="Validation file; if null, val_size of train is held out.")
    format: Literal["auto", "alpaca", "sharegpt", "messages"] = Field(
        "auto", description="Record format; auto detects it from the first record and says what it found."
    )
    val_size: float = Field(
        0.15, ge=0.0, lt=1.0, description="Fraction of train held out for validation when eval is null (0 = none)."
    )
    max_length: int = Field(1024, gt=8, description="Longest tokenized sample; longer ones are truncated, "
                            "keeping as much of the response as possible.")
    max_samples: int | None = Field(None, gt=0, description="Use at most this many training records.")
