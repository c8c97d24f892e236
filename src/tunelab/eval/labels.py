"""Classification scored from a chat model: generated answers -> labels, label likelihoods -> probabilities.

For label data (sentiment, topic, intent...) the assistant's answer is a class name, often
wrapped as `\\boxed{类别}`. The label set is read from the references themselves, so no extra
file is needed. Predictions are the greedy generations reduced to a label; ROC AUC needs a
score per class, which comes from the log-likelihood of each label's answer text given the
prompt, softmax-normalised over the label set. The prompt runs once per record and every label
is scored from its cached keys/values (tunelab.eval.loglik.option_logprobs).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from tunelab.eval.loglik import option_logprobs
from tunelab.eval.metrics import classification_metrics, normalize

OTHER = "<other>"  # a generated answer that names none of the labels
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def extract_label(text: str) -> str:
    """The label an answer states: the last `\\boxed{...}` content if any, else the whole text; normalized."""
    found = _BOXED.findall(text)
    return normalize(found[-1] if found else text)


def to_label(prediction: str, labels: Sequence[str]) -> str:
    """Map a generated answer to a label: its extracted label, else the only label it mentions, else OTHER."""
    label = extract_label(prediction)
    if label in labels:
        return label
    mentioned = [lab for lab in labels if lab and lab in normalize(prediction)]
    return mentioned[0] if len(mentioned) == 1 else OTHER


def label_set(references: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """(sorted labels, label -> the first reference text that states it); the latter is what gets scored."""
    texts: dict[str, str] = {}
    for ref in references:
        texts.setdefault(extract_label(ref), ref)
    if len(texts) < 2:
        raise ValueError(f"classification needs at least two distinct labels in the references (found "
                         f"{sorted(texts)!r}); use generation metrics such as exact_match for this data")
    return sorted(texts), texts


def softmax(row: Sequence[float]) -> list[float]:
    top = max(row)
    exps = [math.exp(v - top) for v in row]
    total = sum(exps)
    return [e / total for e in exps]


def classification_eval(model, tokenizer, template: str, prompts: Sequence[list[dict]], references: Sequence[str],
                        predictions: Sequence[str], batch_size: int = 8,
                        max_length: int = 2048) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(metrics, per-example extras) for label data.

    Metrics: accuracy / macro-F1 / confusion matrix of the generated labels (classification_metrics
    with OTHER for unparseable answers), ROC AUC of the label probabilities, and "ll_accuracy", the
    accuracy of choosing the most likely label (what a constrained decoder would answer).
    Extras per example: "label", "predicted_label", "label_probs" ({label: probability}).
    """
    labels, texts = label_set(references)
    y_true = [extract_label(r) for r in references]
    y_pred = [to_label(p, labels) for p in predictions]
    options = [texts[lab] for lab in labels]
    scores = option_logprobs(model, tokenizer, template, prompts, [options] * len(prompts), batch_size, max_length)
    k = len(labels)
    probs = [softmax([s for s, _ in row]) for row in scores]
    metrics = classification_metrics(y_true, y_pred, labels, probs, other=OTHER)
    best = [labels[max(range(k), key=row.__getitem__)] for row in probs]
    metrics["ll_accuracy"] = sum(b == t for b, t in zip(best, y_true)) / len(y_true)
    extras = [{"label": t, "predicted_label": p, "label_probs": dict(zip(labels, row))}
              for t, p, row in zip(y_true, y_pred, probs)]
    return metrics, extras
