"""What every command shares: the error console, which exceptions are user errors, library noise control."""

from __future__ import annotations

import warnings

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
    from tunelab.stages.recipe import RunFolderError
    from tunelab.tracking import MissingExtra
    from tunelab.utils.io import DiskFullError
    from tunelab.utils.userfiles import UserFileError

    return (ConfigError, DataError, TemplateError, ModelNotFound, RunNotFound, RunFolderError, FileNotFoundError,
            MissingExtra, DiskFullError, UserFileError, ExportError)


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
