"""`tunelab eval`: score a run on a data file or a multiple-choice file, optionally beside base or another run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from tunelab.cli.common import _fail, _quiet_library_warnings, _set_threads, _user_errors, check_option, err


def _cell(value: Any, signed: bool = False) -> str:
    if isinstance(value, float):
        return f"{value:+.4f}" if signed else f"{value:.4f}"
    if isinstance(value, int) and signed:
        return f"{value:+d}"
    return "" if value is None else str(value)


def _table(results: dict, title: str):
    """metric | value, or metric | this run | other | delta when a comparison was made.

    Rows keep the order of the results: task metrics first, then loss and perplexity.
    """
    from rich.table import Table

    scalars = {k: v for k, v in results.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    compare = results.get("compare")
    if not compare:
        table = Table("metric", "value", title=title)
        for k, v in scalars.items():
            table.add_row(k, _cell(v))
        return table
    table = Table("metric", "this run", compare["name"], "delta", title=title)
    for k, v in scalars.items():
        table.add_row(k, _cell(v), _cell(compare["metrics"].get(k)), _cell(compare["deltas"].get(k), signed=True))
    return table


def eval_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A run folder.")],
    data: Annotated[list[str] | None, typer.Option(
        "--data", "-d", help="Data file (same formats as training). Repeat it for one file per task, as FILE or "
        "TASK=FILE: metrics are then reported per task (TASK/metric) and averaged (mean/metric).")] = None,
    mc: Annotated[Path | None, typer.Option(
        "--mc", help="Multiple-choice file (MMLU/C-Eval style JSON/JSONL) scored by log-likelihood.")] = None,
    metrics: Annotated[str, typer.Option(
        help="Comma-separated: exact_match, contains, bleu4, rouge, box_iou, classification.")] = "exact_match,contains",
    compare: Annotated[str | None, typer.Option(
        help="Also score 'base' (the run's base model, same template) or another run folder; shows deltas.")]
    = None,
    human_sheet: Annotated[Path | None, typer.Option(
        help="With --compare: write a blinded A/B rating CSV (A = this run); rate it, then "
             "`tunelab import-ratings FILE`.")] = None,
    judge: Annotated[str | None, typer.Option(
        help="Grade answers with an LLM judge: a run folder, a local model name/path, or an OpenAI-compatible "
             "URL (e.g. http://127.0.0.1:8000 from `tunelab serve`). Adds judge_rubric (1-5) and, with "
             "--compare, a position-swapped pairwise judge_win_rate.")] = None,
    judge_model: Annotated[str | None, typer.Option(
        help="--judge URL: the model name to ask (default: the first in its /v1/models).")] = None,
    judge_api_key: Annotated[str | None, typer.Option(
        envvar="TUNELAB_JUDGE_API_KEY", help="--judge URL: its API key (sent as a Bearer token).")] = None,
    human_ratings: Annotated[Path | None, typer.Option(
        help="With --judge: a rated --human-sheet CSV; reports how often the judge agrees with the raters "
             "(judge_human_agreement, Cohen's judge_human_kappa).")] = None,
    fluency_lm: Annotated[str | None, typer.Option(
        help="A reference LM (run folder or local model): adds fluency_ppl, the answers' perplexity under it "
             "(lower = more fluent).")] = None,
    speed_samples: Annotated[int | None, typer.Option(
        help="Time this many prompts answered one at a time (batch 1, greedy) for this run and, with --compare, "
             "the other system, in this process: latency_p50_s/p95_s, tokens_per_s, ms_per_token. 0: off. "
             "Default: 8 with --compare, else 0.")] = None,
    mc_scoring: Annotated[str, typer.Option(help="--mc: score each option's 'letter' or its 'text'.")] = "letter",
    max_new_tokens: Annotated[int, typer.Option(help="Longest generated answer.")] = 64,
    batch_size: Annotated[int, typer.Option(help="Samples per forward/generate batch.")] = 8,
    limit: Annotated[int | None, typer.Option(help="Evaluate only the first N records.")] = None,
) -> None:
    """Score a run on --data (task metrics first, then loss and perplexity) or on an --mc benchmark.

    Saved under RUN_DIR/eval/ with per-example predictions. Examples:
    tunelab eval runs/r --data val.jsonl --compare base --human-sheet ab.csv;
    tunelab eval runs/multi --data qa=qa_val.jsonl --data chat=chat_val.jsonl;
    tunelab eval runs/r --mc ceval_val.jsonl --compare runs/other;
    tunelab eval runs/r --data val.jsonl --compare base --judge http://127.0.0.1:8000 --fluency-lm smollm2

    CPU threads: TUNELAB_THREADS=N (default: OMP_NUM_THREADS, else the cores this process may use).
    """
    check_option("--max-new-tokens", max_new_tokens, 1)
    check_option("--batch-size", batch_size, 1)
    check_option("--limit", limit, 1)
    check_option("--speed-samples", speed_samples, 0)
    if speed_samples is None:
        speed_samples = 8 if compare and data else 0
    _quiet_library_warnings()
    from tunelab.run import Run

    if (not data) == (mc is None):
        _fail(ValueError("pass --data FILE (generate and score answers) or --mc FILE (multiple choice), not both"))
    if human_sheet and not compare:
        _fail(ValueError("--human-sheet pairs two systems' answers: add --compare base (or --compare RUN_DIR)"))
    _set_threads()
    try:
        if data:  # unreadable data fails here, before the run's model is loaded
            from tunelab.data.sources import read_any
            from tunelab.eval.evaluate import task_files

            for path in task_files(data).values():
                read_any(path)
        results = Run(run_dir).evaluate(
            data or None, mc=str(mc) if mc else None, mc_scoring=mc_scoring,
            metrics=[m.strip() for m in metrics.split(",") if m.strip()], compare=compare,
            human_sheet=human_sheet, judge=judge, judge_model=judge_model, judge_api_key=judge_api_key,
            human_ratings=human_ratings, fluency_lm=fluency_lm, speed_samples=speed_samples,
            max_new_tokens=max_new_tokens, batch_size=batch_size, limit=limit)
    except (*_user_errors(), KeyError, ValueError) as e:
        _fail(e)
    Console(width=200).print(_table(results, f"{run_dir} on {', '.join(data) if data else mc}"))
    for key, note in results.items():  # "note", or "<task>/note" with several tasks
        if key == "note" or key.endswith("/note"):
            err.print(f"[yellow]note[/]{' (' + key[:-5] + ')' if key != 'note' else ''}: {note}", highlight=False)
    if judge:
        agreement = (results.get("judge_human_agreement"), results.get("judge_human_kappa"))
        err.print(f"judge {judge}: rubric 1-5 on every answer" + (
            "; pairwise asked in both orders, a win only when both agree" if compare else "") + (
            f"; agrees with the raters on {agreement[0]:.0%} of rows (kappa {agreement[1]:+.2f})"
            if agreement[0] is not None else ""), highlight=False)
    err.print(f"saved {results['saved']}")
    if results.get("human_sheet"):
        err.print(f"rating sheet {results['human_sheet']} (key {results['human_key']}); after rating: "
                  f"tunelab import-ratings {results['human_sheet']}")
