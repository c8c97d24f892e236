"""Per-task validation metrics of a multihead run, and the eval/ file that holds them with the predictions."""

from __future__ import annotations

import math

from tunelab.eval.entities import entity_metrics
from tunelab.runfolder import RunFolder
from tunelab.training.multihead import MultiHeadModel, regression_metrics, task_predictions
from tunelab.utils.io import atomic_write_json, atomic_write_jsonl


def task_metrics(model: MultiHeadModel, task: str, samples: list, examples: list, pad_id: int, batch_size: int,
                 device, eval_loss: float | None) -> dict:
    """``{"metrics": {...}, "rows": [per-example prediction rows]}`` for one task's validation set.

    classify: accuracy, macro precision/recall/F1, AUC (`classification_metrics`); regress: MSE, MAE, R^2,
    Pearson; tag: entity precision/recall/F1 (`entity_metrics`); lm: the loop's last eval loss and its
    perplexity. Every kind also reports its plain mean validation loss (``loss``).
    """
    spec = model.specs[task]
    base = {} if eval_loss is None else {"loss": eval_loss}
    if spec["kind"] == "lm":
        ppl = math.exp(min(eval_loss, 50)) if eval_loss is not None else None
        return {"metrics": {**base, "ppl": ppl}, "rows": []}
    out = task_predictions(model, task, samples, pad_id, batch_size, device)
    if spec["kind"] == "classify":
        from tunelab.eval.metrics import classification_metrics

        labels = spec["labels"]
        preds = [labels[max(range(len(p)), key=p.__getitem__)] for p in out]
        metrics = classification_metrics([ex.label for ex in examples], preds, labels, out)
        rows = [{"reference": ex.label, "prediction": p} for ex, p in zip(examples, preds)]
    elif spec["kind"] == "regress":
        metrics = regression_metrics([ex.value for ex in examples], out)
        rows = [{"reference": ex.value, "prediction": p} for ex, p in zip(examples, out)]
    else:
        metrics = entity_metrics([ex.tags for ex in examples], out)
        rows = [{"words": ex.words, "reference": ex.tags, "prediction": p} for ex, p in zip(examples, out)]
    return {"metrics": {**base, **metrics}, "rows": rows}


def write_multihead_eval(run_dir, per_task: dict[str, dict], specs: dict[str, dict]) -> None:
    """eval/validation-<time>.json with every task's metrics, and the predictions (task, reference, prediction)."""
    out = RunFolder(run_dir).eval_path("validation")
    atomic_write_jsonl(RunFolder.predictions_path(out), [{"task": n, **row} for n, m in per_task.items()
                                                         for row in m["rows"]])
    atomic_write_json(out, {"data": "multihead", "tasks": {n: {"kind": specs[n]["kind"], "metrics": m["metrics"]}
                                                           for n, m in per_task.items()},
                            "settings": {"split": "validation"}, "n": sum(len(m["rows"]) for m in per_task.values())})
