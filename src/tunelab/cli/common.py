"""What every command shares: the error console, which exceptions are user errors, library noise control."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

err = Console(stderr=True, soft_wrap=True)


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input: shown as one clear line, never a traceback."""
    from tunelab.config import ConfigError
    from tunelab.data.io import DataError
    from tunelab.data.templates import TemplateError
    from tunelab.export.base import ExportError
    from tunelab.models import ModelNotFound
    from tunelab.run import RunNotFound
    from tunelab.training.setup import RunFolderError
    from tunelab.tracking import MissingExtra
    from tunelab.utils.io import DiskFullError
    from tunelab.utils.userfiles import UserFileError
    from tunelab.infer.vision import ImageInputError
    from tunelab.models.vision import VisionModelError

    return (ConfigError, DataError, TemplateError, ModelNotFound, RunNotFound, RunFolderError, FileNotFoundError,
            MissingExtra, DiskFullError, UserFileError, ExportError, ImageInputError, VisionModelError)


def _fail(e: BaseException, code: int = 2) -> None:
    err.print(f"[red bold]error:[/] {escape(str(e))}", highlight=False, emoji=False)  # "f.yaml:100:" is no emoji
    raise typer.Exit(code)


def _quiet_library_warnings() -> None:
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _set_threads() -> int:
    """Give torch its CPU thread count (tunelab.utils.threads) before a model is loaded; a bad value is one line."""
    from tunelab.utils.threads import apply_threads

    try:
        return apply_threads()
    except ValueError as e:
        _fail(e)
        raise  # unreachable: _fail exits


MAX_SEED = 2**63 - 1  # torch.manual_seed takes a 64-bit integer (the config's train.seed is narrower: 0..2**32-1)


def check_option(name: str, value: float | int | None, low: float | None = None, high: float | None = None,
                 *, above: bool = False) -> None:
    """Refuse a number option that is not finite or out of range, in one line naming it; None passes.

    `low`/`high` are inclusive bounds (`above=True` makes `low` exclusive). click parses `nan` and `inf` as
    floats and its own range check lets NaN through, so every numeric option of a command that samples or
    batches goes through here before anything is loaded, e.g. `error: --top-p must be a number > 0 and <= 1
    (got 2.0)`.
    """
    if value is None:
        return
    ok = math.isfinite(value) and (low is None or (value > low if above else value >= low)) \
        and (high is None or value <= high)
    if ok:
        return
    def num(x: float) -> str:
        return f"{x:,}" if isinstance(x, int) else f"{x:g}"

    parts = ([f"{'>' if above else '>='} {num(low)}"] if low is not None else []) + \
        ([f"<= {num(high)}"] if high is not None else [])
    kind = "a whole number" if isinstance(value, int) else "a number"
    _fail(ValueError(f"{name} must be {kind} {' and '.join(parts)} (got {value})"))


def check_output_file(name: str, path: Path) -> None:
    """Refuse an output path that is a folder (the atomic write would fail on it after all the work is done)."""
    if path.is_dir():
        _fail(ValueError(f"{name} {path}: is a folder; give a file path, e.g. {name} {path / 'out.jsonl'}"))
