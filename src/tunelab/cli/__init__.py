"""The `tunelab` command line: thin wrappers over the Python API."""

from __future__ import annotations

import typer

app = typer.Typer(name="tunelab", help="Fine-tune large language models: a run is a folder.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


def main() -> None:
    """Console-script entry point."""
    app()
