"""The base of every config section."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
"""Every integer setting must fit here: torch, numpy and the data position counters store int64."""


class Section(BaseModel):
    """Base for every config section: unknown keys are errors, values are validated on assignment.

    Numbers must be usable: a float may not be NaN or infinite (`lr: 1e400` is an infinite learning
    rate in YAML; `allow_inf_nan=False` refuses it at validation, not after the model loaded), and an
    integer must fit in int64. Fields add their own tighter bounds (`train.seed` fits a 32-bit seed).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _ints_fit_int64(cls, value: Any) -> Any:
        _check_int64(value)
        return value


def _check_int64(value: Any) -> None:
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise ValueError(f"{value} does not fit in a 64-bit integer; use a number below 2**63 "
                             f"({INT64_MAX})")
    elif isinstance(value, (list, tuple, set)):
        for item in value:
            _check_int64(item)
    elif isinstance(value, dict):
        for item in value.values():
            _check_int64(item)
