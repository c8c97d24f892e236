"""`tunelab sweep`: search a run config's hyperparameters with Optuna (TPE + median pruning), resumable."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from tunelab.cli.common import _fail, _quiet_library_warnings, _user_errors, err


def sweep(
    config: Annotated[Path, typer.Argument(help="YAML run config: the base every trial starts from.")],
    overrides: Annotated[Optional[list[str]], typer.Argument(
        help="KEY=VALUE overrides applied to every trial, e.g. train.max_steps=200.")] = None,
    space: Annotated[Path, typer.Option("--space", help="space.yaml: config keys and their ranges, e.g. "
                                        "'train.lr: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}'.")] = ...,
    trials: Annotated[int, typer.Option("--trials", min=1, help="Trials in all (a resumed sweep counts the "
                                        "ones it already has).")] = 10,
    metric: Annotated[str, typer.Option("--metric", help="What to optimize: eval_loss, another eval line key "
                                        "(eval_accuracy...) or a summary.json key (accuracy, f1_macro...).")
                      ] = "eval_loss",
    direction: Annotated[Optional[str], typer.Option(help="minimize or maximize (default: minimize for losses "
                                                     "and perplexities, maximize otherwise).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Sweep folder (default sweeps/<config name>); "
                                                "run the same command again to continue it.")] = None,
    nproc: Annotated[int, typer.Option("--nproc", min=1, help="Processes per trial (each trial is `tunelab "
                                       "train --nproc N`; trials run one after another).")] = 1,
    prune: Annotated[bool, typer.Option(help="Stop trials whose eval curve is worse than the median.")] = True,
    startup_trials: Annotated[int, typer.Option(min=0, help="Random trials before TPE, and finished trials "
                                                "before pruning starts.")] = 5,
    prune_warmup: Annotated[int, typer.Option(min=0, help="Steps before a trial may be pruned.")] = 0,
    seed: Annotated[int, typer.Option(min=0, help="Sampler seed.")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only the sweep's own lines, no training progress.")
                     ] = False,
) -> None:
    """Hyperparameter search: each trial a normal run folder; a table, plots and best.json in the sweep folder.

    Example: tunelab sweep examples/sft_full_tiny.yaml --space examples/sweep/space_tiny.yaml --trials 8
    """
    _quiet_library_warnings()
    try:
        from tunelab.sweep import SpaceError, SweepError, run_sweep
    except ImportError as e:
        _fail(ImportError(f"tunelab sweep needs optuna ({e}): pip install 'tunelab[sweep]'"))
    try:
        result = run_sweep(config, space, trials, metric, direction, out, overrides or [], nproc, prune,
                           startup_trials, prune_warmup, seed, progress=not quiet, say=err.print)
    except (*_user_errors(), SpaceError, SweepError) as e:
        _fail(e)
    if result.best is None:
        _fail(SweepError(f"no trial finished; see {result.path}/report.html"))
    b = result.best
    err.print(f"[green]best[/]: trial {b['trial']}, {metric} {b['value']:.5g} -> {b['run_dir']} "
              f"(report: {result.path}/report.html)")
    typer.echo(b["run_dir"])
