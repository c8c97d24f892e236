"""`tunelab eval`: generation/classification metrics (then loss and perplexity) or a multiple-choice benchmark
of a run, optionally beside its base model or another run; results and predictions saved in the run.

Results lead with the task metrics (contains, exact_match, BLEU, ROUGE, classification): they say
whether the answers are right. Loss and perplexity follow, with a "note" when the references are
too short for them to mean task success (see `short_reference_note`)."""

from __future__ import annotations

import contextlib
import gc
import math
import re
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from tunelab.data.pipeline import collate, load_conversations
from tunelab.data.templates import tokenize_conversation
from tunelab.engine.loop import evaluate_loss
from tunelab.engine.loss import causal_lm_loss_sum, count_targets
from tunelab.eval.compare import load_other, metric_deltas, pair_rows, sheet_rows
from tunelab.eval.labels import classification_eval
from tunelab.eval.mc import score_mc
from tunelab.eval.metrics import GENERATION_METRICS, generation_metrics
from tunelab.infer.generate import generate
from tunelab.runfolder import RunFolder
from tunelab.utils.io import atomic_write_json, atomic_write_jsonl

DEFAULT_METRICS = ("exact_match", "contains")
# metrics that need the model itself (not only its answers): name -> fn(model, tok, template, prompts, refs, preds,
# batch_size, max_length) -> (metrics, per-example extras)
MODEL_METRICS: dict[str, Callable[..., tuple[dict, list[dict]]]] = {"classification": classification_eval}
ALL_METRICS = (*GENERATION_METRICS, *MODEL_METRICS)

Scorer = Callable[[Any, Any, str], tuple[dict, list[dict]]]


def _loss(model, batch):
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    return causal_lm_loss_sum(out.logits, batch["labels"]), count_targets(batch["labels"])


def check_metrics(metrics: Sequence[str]) -> None:
    """Fail before any model is loaded when a metric name is unknown."""
    unknown = [m for m in metrics if m not in ALL_METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(map(repr, unknown))}; choose from {', '.join(ALL_METRICS)}")


def score_model(model, tokenizer, template: str, data: str, metrics: Sequence[str] = DEFAULT_METRICS,
                max_new_tokens: int = 64, batch_size: int = 8, max_length: int = 1024, limit: int | None = None,
                fmt: str = "auto") -> tuple[dict, list[dict]]:
    """(metrics, per-example predictions) of a loaded model on a data file; greedy decoding.

    The generation metrics compare the model's answer to the last assistant turn of each record;
    "classification" reads labels from those answers (see tunelab.eval.labels). They come first in
    the returned dict, then loss and perplexity (over every assistant token), "n", and a "note"
    when the references are short.
    """
    check_metrics(metrics)
    convs, _ = load_conversations(data, fmt)
    if limit:
        convs = convs[:limit]
    device = next(model.parameters()).device
    samples = [tokenize_conversation(tokenizer, template, c, max_length) for c in convs]
    loss = evaluate_loss(model, samples, lambda s: collate(s, tokenizer.pad_token_id), _loss, batch_size, device,
                         contextlib.nullcontext)
    prompts = [c.messages[:-1] for c in convs]
    refs = [c.messages[-1]["content"] for c in convs]
    preds = generate(model, tokenizer, template, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
    # the task metrics lead: they say whether the answers are right; loss and perplexity follow
    results: dict[str, Any] = generation_metrics([m for m in metrics if m in GENERATION_METRICS], preds, refs)
    rows = [{"prompt": p[-1]["content"] if p else "", "reference": r, "prediction": y}
            for p, r, y in zip(prompts, refs, preds)]
    for name in (m for m in metrics if m in MODEL_METRICS):
        scores, extras = MODEL_METRICS[name](model, tokenizer, template, prompts, refs, preds, batch_size, max_length)
        results.update(scores)
        rows = [{**row, **extra} for row, extra in zip(rows, extras)]
    results.update(loss=loss, perplexity=math.exp(min(loss, 50)), n=len(convs))
    note = short_reference_note([len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in refs])
    if note:
        results["note"] = note
    return results, rows


SHORT_REFERENCE_TOKENS = 5  # median reference length (tokens) below which loss/perplexity get a caveat


def short_reference_note(ref_tokens: Sequence[int], threshold: int = SHORT_REFERENCE_TOKENS) -> str | None:
    """The caveat for short references (a label, a word), else None.

    Loss and perplexity average over the reference's few tokens, so they measure how closely the
    model reproduces that exact wording: a tuned model that answers right in its own words (contains
    0 -> 100%) can still show a much higher perplexity than its base.
    """
    if not ref_tokens:
        return None
    ordered = sorted(ref_tokens)
    mid = len(ordered) // 2
    median = ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
    if median >= threshold:
        return None
    return (f"references are short (median {median:g} tokens); loss/perplexity reflect the reference wording, "
            "not task success")


def task_files(data: str | Sequence[str]) -> dict[str, str]:
    """{task: file} from data files given as `path` or `task=path`; a task is named after its file's stem.

    One name per task: two files with the same stem need explicit names (qa_en=a/qa.json qa_zh=b/qa.json).
    """
    items = [data] if isinstance(data, str) else list(data)
    out: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not re.fullmatch(r"[\w.-]+", name):  # a plain path (which may itself hold '=')
            name, path = Path(item).stem, item
        if name in out:
            raise ValueError(f"--data {item}: task {name!r} is already {out[name]}; name them as TASK=FILE "
                             f"(e.g. --data {name}_2={path})")
        out[name] = path
    return out


def score_tasks(model, tokenizer, template: str, files: Mapping[str, str], **kw) -> tuple[dict, list[dict]]:
    """`score_model` on each task's file: metrics as <task>/<metric>, plus mean/<metric> over the tasks.

    The mean is unweighted (each task counts once, however many examples it has), the usual
    multi-task summary; each row of the predictions gains its "task".
    """
    per_task: dict[str, dict] = {}
    rows: list[dict] = []
    for task, path in files.items():
        results, task_rows = score_model(model, tokenizer, template, path, **kw)
        per_task[task] = results
        rows += [{"task": task, **row} for row in task_rows]
    shared = [k for k, v in next(iter(per_task.values())).items()
              if k != "n" and isinstance(v, (int, float)) and all(k in r for r in per_task.values())]
    merged: dict[str, Any] = {f"mean/{k}": sum(r[k] for r in per_task.values()) / len(per_task) for k in shared}
    for task, results in per_task.items():
        merged.update({f"{task}/{k}": v for k, v in results.items()})
    merged["n"] = sum(r["n"] for r in per_task.values())
    return merged, rows


def _slug(text: str) -> str:
    return re.sub(r"[^\w.-]+", "_", text).strip("_") or "other"


def evaluate_run(run, data: str | Sequence[str] | None = None, metrics: Sequence[str] = DEFAULT_METRICS,
                 max_new_tokens: int = 64,
                 batch_size: int = 8, limit: int | None = None, device: str = "auto", *, mc: str | None = None,
                 mc_scoring: str = "letter", compare: str | None = None,
                 human_sheet: str | Path | None = None) -> dict[str, Any]:
    """Score a Run on a data file (`data`) or a multiple-choice file (`mc`) with the run's own template.

    `data` may be several files, one per task (`path` or `task=path`, see `task_files`): metrics are then
    reported per task as <task>/<metric> with mean/<metric> over the tasks (`score_tasks`).

    With `compare` ("base" or another run folder) the other system is scored the same way and
    the saved JSON gains {"compare": {"name", "metrics", "deltas"}}; each predictions row gains
    compare_prediction (and the other compare_* fields). `human_sheet` then writes a blinded
    A/B rating CSV (A = this run, B = the other). Writes eval/<data>[-mc][-vs-<other>]-<time>.json
    plus .predictions.jsonl; returns this run's metrics with "saved" (and "compare", "human_sheet").
    """
    if (data is None) == (mc is None):
        raise ValueError("pass either data (a dataset to generate answers for) or mc (a multiple-choice file)")
    if human_sheet and not compare:
        raise ValueError("a human rating sheet pairs two systems' answers; also pass compare ('base' or a run folder)")
    max_length = run.config.data.max_length
    if mc is not None:
        scorer: Scorer = partial(score_mc, path=mc, scoring=mc_scoring, batch_size=batch_size,
                                 max_length=max_length, limit=limit)
        settings = {"task": "multiple_choice", "scoring": mc_scoring, "batch_size": batch_size, "limit": limit}
        stem = f"{Path(mc).stem}-mc"
    else:
        check_metrics(metrics)
        files = task_files(data)
        options = {"metrics": metrics, "max_new_tokens": max_new_tokens, "batch_size": batch_size,
                   "max_length": max_length, "limit": limit}
        settings = {"decoding": "greedy", "max_new_tokens": max_new_tokens, "batch_size": batch_size,
                    "limit": limit, "metrics": list(metrics)}
        if len(files) == 1 and run.is_vision:  # images go to the model with each prompt (tunelab.eval.vision)
            from tunelab.eval.vision import vision_scorer

            data = next(iter(files.values()))
            scorer = vision_scorer(run, data, **options)
            stem = Path(data).stem
        elif run.is_vision:
            raise ValueError("--data: a vision run is scored on one data file at a time")
        elif len(files) == 1:
            data = next(iter(files.values()))
            scorer = partial(score_model, data=data, **options)
            stem = Path(data).stem
        else:  # one file per task
            scorer = partial(score_tasks, files=files, **options)
            settings["tasks"] = files
            data = list(files.values())
            stem = "+".join(files)
    model, tok, template = run.load_model(device=device)
    results, rows = scorer(model, tok, template)
    del model
    source = str(mc) if mc is not None else data if isinstance(data, list) else str(data)
    record: dict[str, Any] = {"data": source, "metrics": results, "settings": settings,
                              "n": results["n"]}
    if compare:
        name, (other, other_tok, other_template) = load_other(run, compare, device)
        other_results, other_rows = scorer(other, other_tok, other_template)
        del other
        record["compare"] = {"name": name, "spec": compare, "metrics": other_results,
                             "deltas": metric_deltas(results, other_results)}
        rows = pair_rows(rows, other_rows)
        stem += f"-vs-{_slug(name)}"
    gc.collect()
    out = RunFolder(run.path).eval_path(stem)
    atomic_write_jsonl(RunFolder.predictions_path(out), rows)
    atomic_write_json(out, record)
    returned: dict[str, Any] = {**results, "saved": str(out)}
    if compare:
        returned["compare"] = record["compare"]
    if human_sheet:
        from tunelab.eval.human import write_human_sheet

        sheet, key = write_human_sheet(sheet_rows(rows, Path(run.path).resolve().name, record["compare"]["name"]),
                                       human_sheet)
        returned["human_sheet"] = str(sheet)
        returned["human_key"] = str(key)
    return returned
