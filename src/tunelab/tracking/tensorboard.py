"""TensorBoard tracker: event files under `<run>/tensorboard`, viewable with `tensorboard --logdir runs`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter  # needs the `tensorboard` package

from tunelab.tracking.values import scalars


class TensorBoardTracker:
    """Writes each metric as a scalar series and the config as a text summary named "config"."""

    def __init__(self, subdir: str = "tensorboard"):
        self.subdir = subdir
        self._writer: SummaryWriter | None = None

    def start(self, run_dir: Path, config: dict[str, Any]) -> None:
        self._writer = SummaryWriter(log_dir=str(Path(run_dir) / self.subdir))
        # four leading spaces: TensorBoard renders text summaries as Markdown, this keeps it a code block
        text = json.dumps(config, indent=2, ensure_ascii=False, default=str)
        self._writer.add_text("config", "\n".join("    " + line for line in text.splitlines()), global_step=0)

    def log(self, metrics: dict[str, float], step: int) -> None:
        for key, value in scalars(metrics).items():
            self._writer.add_scalar(key, value, global_step=step)

    def finish(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
