"""`tunelab eval`: score a run on a data file (loss, perplexity, generation metrics), saved in the run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from tunelab.cli.common import _fail, _quiet_library_warnings, _user_errors, err


def eval_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A run folder.")],
    data: Annotated[Path, typer.Option("--data", "-d", help="Data file (same formats as training).")],
    metrics: Annotated[str, typer.Option(help="Comma-separated: exact_match, contains, bleu4, rouge.")] =
    "exact_match,contains",
    max_new_tokens: Annotated[int, typer.Option(help="Longest generated answer.")] = 64,
    batch_size: Annotated[int, typer.Option(help="Samples per forward/generate batch.")] = 8,
    limit: Annotated[Optional[int], typer.Option(help="Evaluate only the first N records.")] = None,
) -> None:
    """Loss, perplexity and generation metrics of a run on a data file; saved under RUN_DIR/eval/."""
    _quiet_library_warnings()
    from rich.table import Table

    from tunelab.run import Run

    try:
        results = Run(run_dir).evaluate(str(data), metrics=[m.strip() for m in metrics.split(",") if m.strip()],
                                        max_new_tokens=max_new_tokens, batch_size=batch_size, limit=limit)
    except (*_user_errors(), KeyError) as e:
        _fail(e)
    table = Table("metric", "value", title=f"{run_dir} on {data}")
    for k, v in results.items():
        if k != "saved":
            table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    Console().print(table)
    err.print(f"saved {results['saved']}")
