"""Multi-task learning with a shared model and a head per task (stage multihead).

Each ``data.train`` source is a task (``task:``, else the file's stem), and the ``multihead.heads`` entry with
that ``task`` says what its head is: ``classify`` (a class per text), ``regress`` (a number per text), ``tag``
(a tag per word) or ``lm`` (next-token loss through the model's own LM head). Every task shares the decoder and
the method's trained weights (LoRA or full); each head task adds one linear head (``tunelab.training.multihead``).
A head's ``loss_weight`` scales its task's loss; ``data.train[i].weight`` draws the sample shares as in sft,
and ``data.max_samples`` caps each task's training file. Validation: ``eval_loss/<task>`` at each evaluation,
then each task's own metrics at the end (accuracy / macro-F1 / AUC; MSE / MAE / R^2 / Pearson; entity P/R/F1;
loss / perplexity) in ``eval/`` and summary.json.
"""

from __future__ import annotations

import math
from functools import partial

from tunelab.config import ConfigError
from tunelab.data.io import DataError
from tunelab.data.pipeline import prepare_data, split_tasks
from tunelab.data.regression import load_regression
from tunelab.data.stage_formats import load_classification
from tunelab.data.tagging import load_tagging
from tunelab.data.templates import IGNORE_INDEX, Tokenized
from tunelab.engine.loop import Recipe, fit
from tunelab.training.classes import make_samples
from tunelab.training.multihead import MultiHeadMethod, MultiHeadModel, RegSample, TaskSample, collate_multi, multi_step
from tunelab.training.multihead_eval import task_metrics, write_multihead_eval
from tunelab.training.setup import finish_run, recount_parameters, say, setup_run
from tunelab.training.tagging import make_tag_samples


def check_heads(cfg) -> list[str]:
    """Every data.train task has a head and every head a task; the task names in data order."""
    names = [s.task_name() for s in cfg.data.sources()]
    heads = cfg.multihead.by_task()
    problems = [f"multihead.heads: no head for task {n!r} of data.train; add {{task: {n}, kind: classify|regress|"
                "tag|lm}" for n in names if n not in heads]
    problems += [f"multihead.heads[{i}].task: no data.train source has task {h!r} (tasks: {', '.join(names)})"
                 for i, h in enumerate(heads) if h not in names]
    if cfg.data.eval:
        problems.append("data.eval: a multihead run validates each task on its own; move the file to "
                        "data.train[i].eval")
    if problems:
        raise ConfigError(problems)
    return names


def run(cfg, progress: bool = True):
    """Train the shared model and every task head end to end; return the run folder path."""
    check_heads(cfg)
    heads = cfg.multihead.by_task()
    if any(h.kind == "classify" for h in heads.values()):
        try:  # the classification report needs scikit-learn: fail before training, not after
            import sklearn  # noqa: F401
        except ImportError:
            raise ImportError("a classify head reports its metrics with scikit-learn: pip install 'tunelab[eval]'") \
                from None
    setup = setup_run(cfg, progress)
    tok, tpl, max_len = setup.tokenizer, setup.template, cfg.data.max_length

    def load(path: str, src) -> list:
        items = read(path, src)
        return items[:cfg.data.max_samples] if cfg.data.max_samples and path == src.path else items

    def read(path: str, src) -> list:
        kind = heads[src.task_name()].kind
        if kind == "classify":
            return load_classification(path)
        if kind == "regress":
            return load_regression(path)
        if kind == "tag":
            return load_tagging(path, heads[src.task_name()].scheme.replace("auto", "BIO"))
        one = cfg.data.model_copy(update={"train": path, "eval": None, "val_size": 0.0, "packing": False,
                                          "streaming": False, "format": src.format or cfg.data.format})
        return prepare_data(one, tok, tpl, cfg.train.seed).train

    tasks = split_tasks(cfg.data, load, cfg.train.seed)
    specs, train, val, examples = {}, [], {}, {}
    for t in tasks:
        spec, to_samples = task_spec(heads[t.name], t.train + t.val, tok, tpl, max_len)
        specs[t.name] = spec
        train += [TaskSample(t.name, s) for s in to_samples(t.train)]
        val[t.name] = [TaskSample(t.name, s) for s in to_samples(t.val)]
        examples[t.name] = t.val
    setup.model = MultiHeadModel(setup.model, specs, seed=cfg.train.seed)
    setup.method = MultiHeadMethod(setup.method)
    recount_parameters(setup)
    collate_fn = partial(collate_multi, specs=specs, pad_id=tok.pad_token_id)
    weights = {name: heads[name].loss_weight for name in specs}
    say(progress, "multihead: " + ", ".join(f"{n} ({s['kind']}, weight {weights[n]:g}): {len(val[n])} validation"
                                            for n, s in specs.items()) + f"; {len(train)} training samples")
    result = fit(setup, Recipe(train=cfg.train, optim=cfg.optim, samples=train, val=val, collate=collate_fn,
                               loss=partial(multi_step, weights=weights)), progress=progress)
    summary = dict(result.summary)
    per_task = {}
    for name in specs:
        if val[name]:
            per_task[name] = task_metrics(setup.model, name, [s.sample for s in val[name]], examples[name],
                                          tok.pad_token_id, cfg.train.batch_size, setup.device,
                                          (summary.get("eval_loss_per_task") or {}).get(name))
    if per_task:
        write_multihead_eval(setup.run_dir, per_task, specs)
        summary["tasks"] = {n: m["metrics"] for n, m in per_task.items()}
        for n, m in per_task.items():  # flat keys for tunelab sweep --metric news/f1_macro
            summary.update({f"{n}/{k}": v for k, v in m["metrics"].items() if isinstance(v, (int, float))})
        say(progress, "validation: " + "; ".join(f"{n} " + ", ".join(
            f"{k} {v:.3f}" for k, v in m["metrics"].items() if k in HEADLINE and isinstance(v, float)
            and math.isfinite(v)) for n, m in per_task.items()))
    stats = {"format": "multihead", "tasks": {n: {"kind": s["kind"], "train_samples": sum(x.task == n for x in train),
                                                  "val_samples": len(val[n])} for n, s in specs.items()}}
    return finish_run(setup, summary, stats)


HEADLINE = ("accuracy", "f1_macro", "mse", "pearson", "f1", "loss")


def task_spec(head, items: list, tok, tpl, max_len: int):
    """(the head's saved spec, a function turning the task's examples into its samples)."""
    spec = {"kind": head.kind, "loss_weight": head.loss_weight}
    if head.kind == "classify":
        labels = list(head.labels) if head.labels else sorted({ex.label for ex in items})
        if len(labels) < 2:
            raise DataError(f"a classify task needs at least 2 classes, found {labels}")
        spec.update(labels=labels, pooling=head.pooling)
        return spec, lambda exs: make_samples(exs, labels, "head", tok, tpl, max_len)
    if head.kind == "regress":
        spec.update(pooling=head.pooling)
        return spec, lambda exs: [RegSample(_text_ids(tok, ex.text, max_len), ex.value) for ex in exs]
    if head.kind == "tag":
        scheme = head.scheme if head.scheme != "auto" else (
            "BIOES" if any(t[:2] in ("E-", "S-") for ex in items for t in ex.tags) else "BIO")
        labels = list(head.labels) if head.labels else ["O", *sorted({t for ex in items for t in ex.tags} - {"O"})]
        spec.update(labels=labels, scheme=scheme)
        return spec, lambda exs: make_tag_samples(exs, labels, tok, max_len)
    return spec, lambda exs: list(exs)


def _text_ids(tok, text: str, max_len: int) -> Tokenized:
    ids = tok(text, add_special_tokens=True)["input_ids"][:max_len]
    return Tokenized(ids, [IGNORE_INDEX] * len(ids))
