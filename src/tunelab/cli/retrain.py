"""`tunelab retrain`: train a new run from a served run's request log and compare it with the old one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from tunelab.cli.common import _fail, _quiet_library_warnings, _set_threads, _user_errors, err


def retrain_cmd(
    run_dir: Annotated[Path, typer.Argument(help="The run that was served (the new run starts from it).")],
    log: Annotated[Path, typer.Option(help="The server's request log (`tunelab serve --request-log FILE`).")],
    overrides: Annotated[Optional[list[str]], typer.Argument(
        help="KEY=VALUE overrides of the new run's config (the old run's config otherwise), e.g. "
             "train.max_steps=200 train.lr=5e-5.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="New run folder (default: RUN_DIR-retrain).")] = None,
    model: Annotated[Optional[str], typer.Option(
        help="Keep only answers served under this model name (default: every answer in the log).")] = None,
    min_rating: Annotated[float, typer.Option(help="Keep answers rated at least this (ratings via "
                                                   "POST /v1/feedback).")] = 4,
    include_unrated: Annotated[bool, typer.Option(help="Also keep answers nobody rated.")] = False,
    min_records: Annotated[int, typer.Option(min=1, help="Refuse to train on fewer usable answers.")] = 1,
    val: Annotated[Optional[Path], typer.Option(
        help="Validation file to compare on (default: the old run's own validation set).")] = None,
    metrics: Annotated[str, typer.Option(help="Comma-separated eval metrics for the comparison.")]
    = "exact_match,contains",
    limit: Annotated[Optional[int], typer.Option(min=1, help="Compare on the first N validation records.")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Longest generated answer in the comparison.")] = 64,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No training progress output.")] = False,
) -> None:
    """Retrain from served traffic: rated answers (de-duplicated, PII removed) -> a new run based on RUN_DIR,
    then both compared on RUN_DIR's validation set.

    Example: tunelab retrain runs/demo --log served.jsonl --min-rating 4 train.max_steps=100
    """
    _quiet_library_warnings()
    _set_threads()
    from tunelab.cli.evaluate import _table
    from tunelab.infer.traffic import TrafficLogError
    from tunelab.retrain import RetrainError, retrain

    try:
        report = retrain(run_dir, log, out=out, model=model, min_rating=min_rating, include_unrated=include_unrated,
                         min_records=min_records, val=val, overrides=overrides,
                         metrics=tuple(m.strip() for m in metrics.split(",") if m.strip()), eval_limit=limit,
                         max_new_tokens=max_new_tokens, progress=not quiet)
    except (*_user_errors(), RetrainError, TrafficLogError, KeyError, ValueError) as e:
        _fail(e)
    d = report["data"]
    pii = ", ".join(f"{k} {v}" for k, v in sorted(d["pii"].items())) or "none"
    err.print(f"traffic {log}: {d['requests']} requests -> {d['kept']} kept ({d['negative']} rated negative, "
              f"{d['unrated']} unrated, {d['truncated']} truncated/empty, {d['duplicates']} duplicates); "
              f"PII replaced: {pii}", highlight=False)
    Console(width=200).print(_table(report["eval"], f"{report['run']} vs {report['previous']} on {report['val_file']}"))
    err.print(f"new run {report['run']}; data {report['data_file']}; comparison {report['eval']['saved']}")
