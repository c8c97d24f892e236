"""Stage names and stage-specific config sections."""

from __future__ import annotations

from typing import Literal

StageName = Literal["sft"]
