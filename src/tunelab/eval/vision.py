"""`tunelab eval` of a vision run: answers to image questions (VQA) scored against the references, loss on them.

Each record's images go to the model with its prompt (the run's processor and template); the answer is
compared with the record's last assistant turn by the usual generation metrics (exact_match, contains,
bleu4, rouge) and, for grounding answers (a box `[x1, y1, x2, y2]` in the reference), by box IoU, which is
added automatically when references hold boxes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from typing import Any

import torch

from tunelab.data.pipeline import load_conversations
from tunelab.data.vision import collate_vision, tokenize_vision
from tunelab.engine.loss import causal_lm_loss_sum, count_targets
from tunelab.eval.metrics import GENERATION_METRICS, generation_metrics, parse_box
from tunelab.infer.vision import generate_vision


@torch.no_grad()
def _vision_loss(model, samples, pad_id: int, batch_size: int, device) -> float:
    total, count = 0.0, 0
    for i in range(0, len(samples), batch_size):
        batch = {k: v.to(device) for k, v in collate_vision(samples[i:i + batch_size], pad_id).items()}
        labels = batch.pop("labels")
        logits = model(**batch, use_cache=False).logits  # (B, T, V)
        total += float(causal_lm_loss_sum(logits, labels))
        count += count_targets(labels)
    return total / max(count, 1)


def score_vision(model, tokenizer, template: str, data: str, processor, metrics: Sequence[str] = ("exact_match",
                 "contains"), max_new_tokens: int = 64, batch_size: int = 8, max_length: int = 1024,
                 limit: int | None = None) -> tuple[dict, list[dict]]:
    """(metrics, per-example predictions) of a vision model on an image+text data file; greedy decoding."""
    convs, _ = load_conversations(data, "auto")
    if limit:
        convs = convs[:limit]
    model.eval()
    device = next(model.parameters()).device
    samples = [tokenize_vision(processor, template, c, max_length) for c in convs]
    loss = _vision_loss(model, samples, processor.tokenizer.pad_token_id, batch_size, device)
    items = [(c.messages[:-1], [img.open() for img in c.images]) for c in convs]
    refs = [c.messages[-1]["content"] for c in convs]
    preds = [a.text for a in generate_vision(model, processor, template, items, max_new_tokens)]
    names = [m for m in metrics if m in GENERATION_METRICS]
    if "box_iou" not in names and any(parse_box(r) for r in refs):
        names.append("box_iou")
    results: dict[str, Any] = generation_metrics(names, preds, refs)
    results.update(loss=loss, perplexity=math.exp(min(loss, 50)), n=len(convs))
    rows = [{"prompt": c.messages[-2]["content"] if len(c.messages) > 1 else "", "images": [i.label for i in c.images],
             "reference": r, "prediction": y} for c, r, y in zip(convs, refs, preds)]
    return results, rows


def vision_scorer(run, data: str, **options):
    """A scorer for evaluate_run: (model, tokenizer, template) -> (metrics, rows) with the run's processor."""
    return partial(score_vision, data=data, processor=run.load_processor(), **options)
