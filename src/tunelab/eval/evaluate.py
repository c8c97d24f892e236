"""`tunelab eval`: loss, perplexity and generation metrics of a run on a data file, saved in the run."""

from __future__ import annotations

import datetime as _dt
import math
from pathlib import Path
from typing import Sequence

from tunelab.data.pipeline import collate, load_conversations
from tunelab.data.templates import tokenize_conversation
from tunelab.engine.loop import evaluate_loss
from tunelab.engine.loss import causal_lm_loss_sum, count_targets
from tunelab.eval.metrics import generation_metrics
from tunelab.infer.generate import generate
from tunelab.utils.io import atomic_write_json, atomic_write_jsonl

DEFAULT_METRICS = ("exact_match", "contains")


def _loss(model, batch):
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    return causal_lm_loss_sum(out.logits, batch["labels"]), count_targets(batch["labels"])


def score_model(model, tokenizer, template: str, data: str, metrics: Sequence[str] = DEFAULT_METRICS,
                max_new_tokens: int = 64, batch_size: int = 8, max_length: int = 1024, limit: int | None = None,
                fmt: str = "auto") -> tuple[dict, list[dict]]:
    """(metrics, per-example predictions) of a loaded model on a data file; greedy decoding.

    Loss and perplexity cover every assistant token; the generation metrics compare the
    model's answer to the last assistant turn of each record.
    """
    convs, _ = load_conversations(data, fmt)
    if limit:
        convs = convs[:limit]
    device = next(model.parameters()).device
    samples = [tokenize_conversation(tokenizer, template, c, max_length) for c in convs]
    loss = evaluate_loss(model, samples, lambda s: collate(s, tokenizer.pad_token_id), _loss, batch_size, device,
                         lambda: __import__("contextlib").nullcontext())
    prompts = [c.messages[:-1] for c in convs]
    refs = [c.messages[-1]["content"] for c in convs]
    preds = generate(model, tokenizer, template, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
    results = {"loss": loss, "perplexity": math.exp(min(loss, 50)), "n": len(convs)}
    results.update(generation_metrics(list(metrics), preds, refs))
    rows = [{"prompt": p[-1]["content"] if p else "", "reference": r, "prediction": y}
            for p, r, y in zip(prompts, refs, preds)]
    return results, rows


def evaluate_run(run, data: str, metrics: Sequence[str] = DEFAULT_METRICS, max_new_tokens: int = 64,
                 batch_size: int = 8, limit: int | None = None, device: str = "auto") -> dict:
    """Score a Run on a data file with the run's own template; writes eval/<data>-<time>.json (+ predictions)."""
    model, tok, template = run.load_model(device=device)
    results, rows = score_model(model, tok, template, data, metrics, max_new_tokens, batch_size,
                                run.config.data.max_length, limit)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    stem = Path(data).stem
    out = Path(run.path) / "eval" / f"{stem}-{stamp}.json"
    settings = {"decoding": "greedy", "max_new_tokens": max_new_tokens, "batch_size": batch_size, "limit": limit,
                "metrics": list(metrics)}
    atomic_write_jsonl(out.with_suffix(".predictions.jsonl"), rows)
    atomic_write_json(out, {"data": str(data), "metrics": results, "settings": settings, "n": results["n"]})
    return {**results, "saved": str(out)}
