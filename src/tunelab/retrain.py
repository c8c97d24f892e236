"""`tunelab retrain`: a new run from a served run's traffic, compared with it on the old validation set.

1. `retrain_records` (tunelab.infer.traffic) builds SFT records from the server's request log:
   positively rated or successful answers, de-duplicated per prompt, PII replaced by placeholders.
2. The new run trains on them with the previous run as its base model (`model.name: <old run>`,
   which loads the old run's trained model; see tunelab.models.loader), everything else from the old
   config unless overridden.
3. Its validation set is the old run's (its `data.eval`, or the same seeded `val_size` split of its
   training data), and `tunelab eval NEW --data OLD_VAL --compare OLD` puts the two side by side.

The one call to training is `tunelab.api.train`, so changes to the engine's entry point stay there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.infer.traffic import RetrainData, retrain_records
from tunelab.run import Run
from tunelab.utils.io import atomic_write_json, atomic_write_jsonl


class RetrainError(ValueError):
    """Retraining cannot start (no usable traffic, no validation set); the message says what to do."""


def old_validation(run: Run, out: Path) -> Path:
    """Write the old run's validation conversations (as training split them) to `out`; returns `out`."""
    from tunelab.data.pipeline import split_conversations

    cfg = run.config
    if len(cfg.data.sources()) > 1:
        raise RetrainError(f"{run.path}: a multi-task run; pass --val FILE with the validation set to compare on")
    _, val, _, _ = split_conversations(cfg.data, cfg.train.seed)
    if not val:
        raise RetrainError(f"{run.path} had no validation set (data.eval unset and data.val_size 0); "
                           "pass --val FILE to compare the two runs on")
    return atomic_write_jsonl(out, [{"messages": c.messages} for c in val])


def retrain(run_dir: str | Path, log: str | Path, *, out: str | Path | None = None, model: str | None = None,
            min_rating: float = 4, include_unrated: bool = False, min_records: int = 1, val: str | Path | None = None,
            overrides: list[str] | None = None, metrics: tuple[str, ...] = ("exact_match", "contains"),
            eval_limit: int | None = None, max_new_tokens: int = 64, progress: bool = True) -> dict[str, Any]:
    """Train a new run from `run_dir` on the traffic in `log` and compare both on the old validation set.

    `model` keeps only answers served under that model name (default: all). Writes the data set to
    `<out>.traffic.jsonl`, the old validation set to `<out>.val.jsonl` and this report to
    `<out>.retrain.json` (next to the new run: its config names the first two). Returns {"run": new run
    path, "previous", "data": RetrainData summary, "data_file", "val_file", "eval": the comparison (this
    run = new, compare = old)}.
    """
    old = Run(run_dir)
    out = Path(out) if out else old.path.with_name(old.path.name + "-retrain")
    if out.exists():
        raise RetrainError(f"{out} already exists; pass --out NEW_RUN_DIR")
    data: RetrainData = retrain_records(log, model=model, min_rating=min_rating, include_unrated=include_unrated)
    if data.kept < min_records:
        raise RetrainError(f"{log}: {data.kept} usable answers (need {min_records}): {_why(data)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    data_file = atomic_write_jsonl(out.with_name(out.name + ".traffic.jsonl"), data.records)
    val_file = Path(val) if val else old_validation(old, out.with_name(out.name + ".val.jsonl"))
    cfg = old.config.model_dump(mode="json")
    cfg["model"]["name"] = str(old.path.resolve())
    # the traffic and validation files are written as messages: the old run's column mapping, sample cap and
    # streaming settings were for its own files
    cfg["data"].update(train=str(data_file.resolve()), eval=str(Path(val_file).resolve()), format="messages",
                       columns=None, max_samples=None, streaming=False)
    cfg["output_dir"] = str(out)
    from tunelab.api import train

    new = train(cfg, overrides=overrides, progress=progress)
    comparison = new.evaluate(str(val_file), metrics=list(metrics), compare=str(old.path), limit=eval_limit,
                              max_new_tokens=max_new_tokens)
    report = {"run": str(new.path), "previous": str(old.path), "data": data.summary(), "data_file": str(data_file),
              "val_file": str(val_file), "eval": comparison}
    atomic_write_json(out.with_name(out.name + ".retrain.json"), report)
    return report


def _why(data: RetrainData) -> str:
    parts = [f"{data.requests} requests", f"{data.negative} rated negative", f"{data.unrated} unrated",
             f"{data.truncated} truncated or empty", f"{data.duplicates} duplicates"]
    if data.other_model:
        parts.append(f"{data.other_model} from other models")
    hint = "; rate answers with POST /v1/feedback or pass --include-unrated" if data.unrated else ""
    return ", ".join(parts) + hint
