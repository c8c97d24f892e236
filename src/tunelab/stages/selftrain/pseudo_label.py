"""Pseudo-label self-training of a classifier (``selftrain.mode: pseudo_label``).

Self-training (Yarowsky 1995; Lee 2013, "Pseudo-Label"; Xie et al. 2020, "Noisy Student"): a classifier trained
on a small labelled set labels an unlabelled pool, the predictions it is confident about are added to the
training data as if they were labels, and the classifier is trained again.

- Round 0 trains the ``classify`` stage's model (``classify.mode`` head or label_tokens, its functions reused
  from ``tunelab.stages.classify``) on ``data.train`` alone: the labelled-only baseline.
- Round r >= 1 predicts class probabilities for every pool input with round r-1's model, keeps those whose top
  probability reaches ``selftrain.threshold`` (``selection`` below; ``balance`` keeps the same number per class,
  that of the class with the fewest) and trains again on labelled + kept pool examples.
- Every round starts again from the base model with the same seed (Noisy Student's fresh student): the
  rounds differ only in their training data, so a round's gain is the pseudo-labels' doing, and a model that
  overfit the few labels does not carry its weights into the next round (only its confident labels).
  A round that would keep exactly what the previous one kept would train the same model again, so the loop
  stops there ("converged").
- The run's model is the last round's: picking the best round by the validation metric would tune on the
  validation set that reports it.

Files: ``selftrain_rounds.jsonl`` (one line per round: validation accuracy / macro-F1 / AUC, examples kept per
class, and the pseudo-labels' accuracy when the pool records carry a ``label``, which is never trained on),
``pseudo_labels.jsonl`` (the last pseudo-labelling pass: every pool input with its prediction, confidence and
whether it was kept), ``rounds/round-<r>/`` (that round's checkpoints); ``metrics.jsonl`` holds every round's
training lines on one step axis, each with its ``round``. Weights and ``eval/`` are written as ``classify`` does.
"""

from __future__ import annotations

import shutil
from collections import Counter
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import torch
from torch import Tensor

from tunelab.data.io import DataError, Record
from tunelab.data.sources import read_any
from tunelab.data.stage_formats import CLASS_FORMATS, ClassExample, load_classification
from tunelab.engine import distributed
from tunelab.engine.loop import Recipe, fit
from tunelab.methods import get_method
from tunelab.bases import load_model
from tunelab.training.classes import (
    SCORERS,
    ClassSample,
    class_weights,
    classify_step,
    collate_classes,
    make_samples,
    predict,
    write_eval,
)
from tunelab.training.heads import HeadMethod, ScoreModel
from tunelab.training.setup import (
    finish_run,
    load_split,
    recount_parameters,
    say,
    setup_run,
)
from tunelab.runfolder import RunFolder
from tunelab.utils.io import atomic_write_jsonl

UNLABELLED_HELP = ('expected one JSON object per line (.jsonl) or a JSON array (.json) of {"text": "..."} or '
                   '{"messages": [..., {"role": "user", ...}]} records, the same inputs as data.train without the '
                   'label (a "label" may be present: it only scores the pseudo-labels, never trains)')


@dataclass
class PoolExample:
    """An unlabelled input and, when the record happens to carry one, its hidden gold label."""

    example: ClassExample
    gold: str | None = None


def load_unlabelled(path: str | Path) -> list[PoolExample]:
    """Read the unlabelled pool; a bad record raises DataError naming its file:line and the expected shape."""
    if path is None:
        raise DataError(f"selftrain.unlabelled is not set: mode pseudo_label needs a file of unlabelled inputs; "
                        f"{UNLABELLED_HELP} (or set selftrain.mode: rejection)")
    if not Path(path).is_file():
        raise DataError(f"selftrain.unlabelled: {path}: no such file; {UNLABELLED_HELP}")
    records = read_any(path)
    if not records:
        raise DataError(f"selftrain.unlabelled: {path}: no records (the file is empty); {UNLABELLED_HELP}")
    pool = []
    for rec in records:
        fmt = next((name for name in ("text", "messages") if name in rec.data), None)
        if fmt is None:
            raise DataError(f"{rec.where}: an unlabelled record needs a 'text' or a 'messages' field, got keys "
                            f"{sorted(rec.data)}; {UNLABELLED_HELP}")
        gold = rec.data.get("label")
        if gold is not None and (isinstance(gold, bool) or not isinstance(gold, (str, int))):
            raise DataError(f"{rec.where}: field 'label' must be a string or an integer when present, got {gold!r}")
        example = CLASS_FORMATS[fmt](Record({**rec.data, "label": "?"}, rec.where))  # label checked above
        pool.append(PoolExample(replace(example, answer=None), None if gold is None else str(gold)))
    return pool


def selection(probs: Tensor, threshold: float, balance: bool) -> list[int]:
    """Indices (ascending) of the pool predictions to keep as pseudo-labels.

    ``probs`` is ``(N, K)``. A row is kept when its top probability is ``>= threshold``. With ``balance``, every
    class contributes the same number ``m`` of rows, its most confident ones (earlier rows first on ties), where
    ``m`` is the smallest count over all K classes: a class the model labels confidently nowhere in the pool
    gives ``m = 0``, so nothing is kept rather than pseudo-labels that all speak against that class.
    """
    conf, pred = probs.max(-1)  # (N,), (N,)
    kept = [i for i in range(probs.size(0)) if conf[i] >= threshold]
    if not balance:
        return kept
    by_class: list[list[int]] = [[] for _ in range(probs.size(1))]
    for i in kept:
        by_class[int(pred[i])].append(i)
    cap = min(len(rows) for rows in by_class)
    return sorted(i for rows in by_class for i in sorted(rows, key=lambda j: (-float(conf[j]), j))[:cap])


def answer_pattern(train: list[ClassExample]) -> str | None:
    """The labelled data's answer with its label cut out (``\\boxed{}`` style), for label-token scoring of the pool."""
    for ex in train:
        if ex.answer and ex.label in ex.answer:
            return ex.answer.replace(ex.label, "\0", 1)
    return None


def with_label(ex: ClassExample, label: str, pattern: str | None) -> ClassExample:
    """A pool input as a training example of class ``label``, its answer written in the labelled data's pattern."""
    return replace(ex, label=label, answer=None if pattern is None else pattern.replace("\0", label))


class RoundTracker:
    """Hands a round's log lines to the run's trackers on one step axis (step + offset), tagged with the round."""

    def __init__(self, tracker, round_index: int, offset: int):
        self.tracker, self.round, self.offset = tracker, round_index, offset

    def log(self, metrics: dict, step: int) -> None:
        self.tracker.log({**metrics, "round": self.round}, step + self.offset)


def fresh_classifier(cfg, device, labels: list[str]):
    """The base model with the method applied (same seed every round) and, in head mode, the scoring head."""
    torch.manual_seed(cfg.train.seed)  # the order of setup_run: seed, load, apply
    method = get_method(cfg.method.name)
    model = method.apply(load_model(cfg.model.name, cfg.model.dtype, device, cfg.model.trust_remote_code), cfg.method)
    return as_classifier(model, method, cfg, labels)


def as_classifier(model, method, cfg, labels: list[str]):
    """(model, method) as the classify stage trains them: head mode wraps both with the scoring head."""
    if cfg.classify.mode == "head":
        return ScoreModel(model, len(labels), labels, seed=cfg.train.seed), HeadMethod(method)
    return model, method


def pool_rows(pool: list[PoolExample], labels: list[str], probs: Tensor, kept: list[int]) -> list[dict]:
    """One row per pool input: input, predicted label, confidence, kept, and the gold label when known."""
    conf, pred = probs.max(-1)  # (N,), (N,)
    keep = set(kept)
    return [{"input": p.example.text if p.example.text is not None else p.example.prompt[-1]["content"],
             "where": p.example.where, "prediction": labels[int(pred[i])], "confidence": round(float(conf[i]), 6),
             "kept": i in keep, "gold": p.gold} for i, p in enumerate(pool)]


def pseudo_stats(rows: list[dict]) -> dict:
    """Kept count per class and, when the pool carries gold labels, the accuracy of the kept and of all labels."""
    kept = [r for r in rows if r["kept"]]
    stats = {"kept": len(kept), "kept_per_class": dict(sorted(Counter(r["prediction"] for r in kept).items())),
             "pseudo_accuracy": None, "pool_accuracy": None}
    if rows and all(r["gold"] is not None for r in rows):
        stats["pool_accuracy"] = sum(r["prediction"] == r["gold"] for r in rows) / len(rows)
        if kept:
            stats["pseudo_accuracy"] = sum(r["prediction"] == r["gold"] for r in kept) / len(kept)
    return stats


@dataclass
class RoundData:
    """What every round shares: the labelled, pool and validation data, tokenized, and how to score it."""

    train_ex: list[ClassExample]
    val_ex: list[ClassExample]
    pool: list[PoolExample]
    pool_samples: list[ClassSample]
    val: list[ClassSample]
    labels: list[str]
    pattern: str | None
    scorer: object
    collate_fn: object


def prepare(cfg, setup, pool: list[PoolExample]) -> RoundData:
    """Load the labelled and validation data and tokenize them and the pool for the chosen classify.mode."""
    ccfg, tok, tpl, max_len = cfg.classify, setup.tokenizer, setup.template, cfg.data.max_length
    train_ex, val_ex = load_split(cfg.data, load_classification, cfg.train.seed, stage=cfg.stage)
    labels = list(ccfg.labels) if ccfg.labels else sorted({ex.label for ex in train_ex + val_ex})
    if len(labels) < 2:
        raise DataError(f"{cfg.data.train}: classification needs at least 2 classes, found {labels}")
    pattern = answer_pattern(train_ex)
    pool_samples = make_samples([with_label(p.example, labels[0], pattern) for p in pool], labels, ccfg.mode,
                                tok, tpl, max_len)  # the label is a placeholder: only scored, never trained
    val = make_samples(val_ex, labels, ccfg.mode, tok, tpl, max_len)
    return RoundData(train_ex, val_ex, pool, pool_samples, val, labels, pattern, SCORERS[ccfg.mode],
                     partial(collate_classes, pad_id=tok.pad_token_id))


def train_round(cfg, setup, data: RoundData, r: int, kept: list[tuple[int, int]], offset: int, progress: bool):
    """Train round ``r`` on the labels + the kept (pool index, class) pairs; return the loop's FitResult."""
    ccfg = cfg.classify
    examples = data.train_ex + [with_label(data.pool[i].example, data.labels[c], data.pattern) for i, c in kept]
    train = make_samples(examples, data.labels, ccfg.mode, setup.tokenizer, setup.template, cfg.data.max_length)
    step = partial(classify_step, scorer=data.scorer, weights=class_weights(ccfg.class_weights, data.labels, examples))
    round_dir = RunFolder(setup.run_dir).round_dir(r)  # its own checkpoints: steps restart every round
    in_round = replace(setup, run_dir=round_dir, trackers=[RoundTracker(t, r, offset) for t in setup.trackers])
    result = fit(in_round, Recipe(
        train=cfg.train, optim=cfg.optim, samples=train, val=data.val, collate=data.collate_fn, loss=step,
        reference_data=lambda path: make_samples(load_classification(path), data.labels, ccfg.mode, setup.tokenizer,
                                                 setup.template, cfg.data.max_length)), progress=progress)
    if distributed.current().is_main:  # early stopping's scratch copy (rank 0 wrote it), already loaded
        shutil.rmtree(RunFolder(round_dir).best_dir, ignore_errors=True)
    return result


def validate(cfg, setup, data: RoundData) -> tuple[dict, Tensor | None]:
    """Accuracy, macro-F1 and AUC of the current model on the validation set, and its class probabilities."""
    if not data.val:
        return {}, None
    from tunelab.eval.metrics import classification_metrics

    probs = predict(setup.model, data.val, data.collate_fn, data.scorer, cfg.train.batch_size, setup.device)  # (V, K)
    metrics = classification_metrics([ex.label for ex in data.val_ex],
                                     [data.labels[i] for i in probs.argmax(-1).tolist()], data.labels, probs.tolist())
    return {k: metrics.get(k) for k in ("accuracy", "f1_macro", "auc")}, probs


def run(cfg, progress: bool = True):
    """Train on the labels, then pseudo-label the pool and retrain for selftrain.rounds rounds; return the run path."""
    try:  # the validation report needs scikit-learn: fail before training, not after
        import sklearn  # noqa: F401
    except ImportError:
        raise ImportError("stage selftrain reports its metrics with scikit-learn: "
                          "pip install 'tunelab[eval]'") from None
    scfg, ccfg = cfg.selftrain, cfg.classify
    pool = load_unlabelled(scfg.unlabelled)  # a bad pool file fails before the model loads
    setup = setup_run(cfg, progress)
    main = distributed.current().is_main
    data = prepare(cfg, setup, pool)
    setup.model, setup.method = as_classifier(setup.model, setup.method, cfg, data.labels)
    recount_parameters(setup)
    say(progress, f"selftrain (pseudo_label, {ccfg.mode}): {len(data.labels)} classes {data.labels}; "
        f"{len(data.train_ex)} labelled, {len(data.pool)} unlabelled, {len(data.val)} validation examples; "
        f"{scfg.rounds} rounds at threshold {scfg.threshold}{' (balanced)' if scfg.balance else ''}")
    history: list[dict] = []
    kept: list[tuple[int, int]] = []  # (pool index, class index) of the pseudo-labels in training
    offset, stop, rows = 0, "completed", []
    for r in range(scfg.rounds + 1):
        if r > 0:  # label the pool with the previous round's model
            probs = predict(setup.model, data.pool_samples, data.collate_fn, data.scorer, cfg.train.batch_size,
                            setup.device)  # (N, K)
            pred = probs.argmax(-1).tolist()
            chosen = [(i, pred[i]) for i in selection(probs, scfg.threshold, scfg.balance)]
            rows = pool_rows(data.pool, data.labels, probs, [i for i, _ in chosen])
            if main:
                atomic_write_jsonl(RunFolder(setup.run_dir).pseudo_labels_path, rows)
            if chosen == kept:  # the same training data from the same start would train the same model
                stop = "converged"
                say(progress, f"round {r}: the pseudo-labels kept are those of round {r - 1}; stopping")
                break
            kept = chosen
            del setup.model
            setup.model, setup.method = fresh_classifier(cfg, setup.device, data.labels)
        result = train_round(cfg, setup, data, r, kept, offset, progress)
        offset += result.step
        metrics, val_probs = validate(cfg, setup, data)
        history.append({"round": r, "train_examples": len(data.train_ex) + len(kept), "labelled": len(data.train_ex),
                        "pool": len(data.pool), "threshold": scfg.threshold, "balance": scfg.balance,
                        "steps": result.step, "train_loss": result.summary["train_loss"],
                        "eval_loss": result.summary["eval_loss"], **pseudo_stats(rows), **metrics})
        if main:
            atomic_write_jsonl(RunFolder(setup.run_dir).selftrain_rounds_path, history)
        shown = (f"; validation accuracy {metrics['accuracy']:.3f}, macro-F1 {metrics['f1_macro']:.3f}"
                 if metrics else "")
        say(progress, f"round {r}: {history[-1]['train_examples']} training examples ({len(kept)} pseudo-labelled)"
            + shown)
    summary = {**result.summary, "steps": offset, **{k: history[-1].get(k) for k in ("accuracy", "f1_macro", "auc")},
               "selftrain": {"stopped": stop, "final_round": history[-1]["round"],
                             "baseline_accuracy": history[0].get("accuracy"),
                             "final_accuracy": history[-1].get("accuracy"), "rounds": history}}
    if val_probs is not None and main:
        settings = {"split": "validation", "mode": ccfg.mode, "labels": data.labels,
                    "selftrain_round": history[-1]["round"], "threshold": scfg.threshold, "balance": scfg.balance}
        write_eval(setup.run_dir, cfg.data.eval or cfg.data.train, data.val_ex, data.labels, val_probs, settings)
    stats = {"format": "classification", "mode": ccfg.mode, "selftrain_mode": "pseudo_label", "labels": data.labels,
             "train_samples": len(data.train_ex), "unlabelled": len(data.pool), "val_samples": len(data.val)}
    return finish_run(setup, summary, stats)
