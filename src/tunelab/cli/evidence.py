"""Evidence commands: the HTML run report, the table of runs, and human-rating import.

Mounted by the main CLI as `tunelab report`, `tunelab runs` and `tunelab import-ratings`;
this sub-app exists so they can also be tested on their own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tunelab.data.io import DataError
from tunelab.eval.human import HumanEvalError
from tunelab.eval.human import import_ratings as _import_ratings
from tunelab.eval.report import RUN_COLUMNS, ReportError, list_runs, write_report

app = typer.Typer(help="Run reports, run listings and human-evaluation results.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)


def _fail(err: Exception) -> None:
    Console(stderr=True, width=200).print(f"[red]error:[/red] {escape(str(err))}", highlight=False)
    raise typer.Exit(code=1)


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="A run folder written by `tunelab train`.")]) -> None:
    """Write RUN_DIR/report.html (self-contained: plots inline, no network) and print its path."""
    try:
        path = write_report(run_dir)
    except (ReportError, DataError, ValueError) as e:
        _fail(e)
    typer.echo(str(path))


@app.command()
def runs(root: Annotated[Path, typer.Argument(help="Folder holding run folders.")] = Path("runs"),
         sort: Annotated[str, typer.Option(help=f"Column to sort by: {', '.join(RUN_COLUMNS)}.")] = "created",
         desc: Annotated[bool, typer.Option("--desc", help="Sort in descending order.")] = False) -> None:
    """List the runs under ROOT with base model, method, steps and final losses."""
    try:
        rows = list_runs(root, sort=sort, desc=desc)
    except (ReportError, DataError, ValueError) as e:
        _fail(e)
    if not rows:
        typer.echo(f"no runs under {root}")
        return
    table = Table(title=f"runs in {root}")
    for column in RUN_COLUMNS:
        table.add_column(column, justify="right" if column in ("steps", "train_loss", "eval_loss") else "left")
    for row in rows:
        table.add_row(*(_fmt(row[c]) for c in RUN_COLUMNS))
    Console(width=200).print(table)


@app.command("import-ratings")
def import_ratings(
    csv_path: Annotated[Path, typer.Argument(help="A filled-in sheet from write_human_sheet.")],
    key: Annotated[Path | None, typer.Option(help="The key file, if not next to the sheet.")] = None,
) -> None:
    """Un-blind a rated A/B sheet and print each system's win rate (ties count half) with a 95% CI."""
    try:
        result = _import_ratings(csv_path, key)
    except HumanEvalError as e:
        _fail(e)
    table = Table(title=f"{result['n']} rated comparisons")
    for column in ("system", "win rate", "95% CI", "wins", "ties", "losses"):
        table.add_column(column, justify="left" if column == "system" else "right")
    for name, s in sorted(result["systems"].items(), key=lambda kv: -kv[1]["win_rate"]):
        lo, hi = s["ci95"]
        table.add_row(name, f"{s['win_rate']:.1%}", f"{lo:.1%} – {hi:.1%}", str(s["wins"]), str(s["ties"]),
                      str(s["losses"]))
    Console(width=200).print(table)
