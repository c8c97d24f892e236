"""Sequence classification on a decoder, two ways (``classify.mode``).

``head``: a linear head on the hidden state of the last real token, or on the mean of the real tokens'
    states (``classify.pooling``; ``tunelab.training.heads.ScoreModel``), trained with the configured method
    (LoRA or full) and saved with the run as ``head.safetensors``. Raw ``text`` is tokenized as is (keeping its
    start when too long); a ``messages`` prompt is rendered with the chat template up to the assistant header,
    a too-long one shortened inside its longest message (``fit_prompt``).
``label_tokens``: no new weights. Each label is scored by the log-probability of the model writing it as the
    answer, ``log p(answer(label) | prompt)``, and the scores are normalized over the label set only
    (a softmax over the K labels). ``answer(label)`` follows the data's own answer pattern: a record whose
    answer is ``\\boxed{体育}`` for label 体育 is scored on ``\\boxed{政治}``, ``\\boxed{财经}``, ... The model
    stays a chat model, so the run also chats, serves and exports as usual.

Both train with cross-entropy over the classes, optionally class-weighted for imbalanced data
(``class_weights: balanced`` gives class c the weight ``n / (K * n_c)``), and report accuracy, macro-F1 and
AUC on the validation set via ``tunelab.eval.metrics.classification_metrics`` (saved under ``eval/``).

With a ``domain:`` section (mode head), unlabelled target-domain text joins every training step and a DANN or
MMD loss aligns the head's input features across the two domains (``tunelab.training.domain``).
"""

from __future__ import annotations

from functools import partial

from tunelab.data.io import DataError
from tunelab.data.stage_formats import load_classification
from tunelab.engine.loop import Recipe, fit
from tunelab.training.classes import (
    SCORERS,
    EvalLogits,
    class_weights,
    classify_step,
    collate_classes,
    make_samples,
    predict,
    write_eval,
)
from tunelab.training.domain import (
    DomainClassifier,
    TargetBatches,
    collate_with_target,
    domain_step,
    load_target_texts,
)
from tunelab.training.heads import HeadMethod, ScoreModel
from tunelab.training.setup import (
    finish_run,
    load_split,
    recount_parameters,
    say,
    setup_run,
)


def run(cfg, progress: bool = True):
    """Train a classifier end to end (head or label-token scoring) and return the run folder path."""
    try:  # the validation report needs scikit-learn: fail before training, not after
        import sklearn  # noqa: F401
    except ImportError:
        raise ImportError("stage classify reports its metrics with scikit-learn: pip install 'tunelab[eval]'") from None
    setup = setup_run(cfg, progress)
    ccfg = cfg.classify
    train_ex, val_ex = load_split(cfg.data, load_classification, cfg.train.seed, stage=cfg.stage)
    labels = list(ccfg.labels) if ccfg.labels else sorted({ex.label for ex in train_ex + val_ex})
    if len(labels) < 2:
        raise DataError(f"{cfg.data.train}: classification needs at least 2 classes, found {labels}")
    if isinstance(ccfg.class_weights, list) and len(ccfg.class_weights) != len(labels):
        raise DataError(f"classify.class_weights: {len(ccfg.class_weights)} numbers for {len(labels)} labels "
                        f"{labels}; give one per label")
    weights = class_weights(ccfg.class_weights, labels, train_ex)
    tok, tpl = setup.tokenizer, setup.template
    as_text = ccfg.head_input == "text"
    train = make_samples(train_ex, labels, ccfg.mode, tok, tpl, cfg.data.max_length, as_text)
    val = make_samples(val_ex, labels, ccfg.mode, tok, tpl, cfg.data.max_length, as_text)
    if ccfg.mode == "head":
        setup.model = ScoreModel(setup.model, len(labels), labels, seed=cfg.train.seed, pooling=ccfg.pooling)
        setup.method = HeadMethod(setup.method)
        recount_parameters(setup)
    scorer = SCORERS[ccfg.mode]
    collate_fn = partial(collate_classes, pad_id=tok.pad_token_id)
    eval_logits = EvalLogits(len(val))
    step = partial(classify_step, scorer=scorer, weights=weights, eval_logits=eval_logits)
    if cfg.domain is not None:  # unlabelled target text: DANN or MMD on the pooled features (training/domain.py)
        collate_fn, step = domain_adaptation(cfg, setup, collate_fn, weights, progress)
    say(progress, f"classify ({ccfg.mode}): {len(labels)} classes {labels}; {len(train)} train / {len(val)} "
        f"validation examples from {cfg.data.train}")
    result = fit(setup, Recipe(
        train=cfg.train, optim=cfg.optim, samples=train, val=val, collate=collate_fn, loss=step,
        reference_data=lambda path: make_samples(load_classification(path), labels, ccfg.mode, tok, tpl,
                                                 cfg.data.max_length)), progress=progress)
    summary = dict(result.summary)
    if val:
        # the loop's final evaluation scored the validation set with the weights the run keeps, unless early
        # stopping put an earlier step's weights back: then (or when no whole pass was seen) score it again
        restored = summary.get("restored_step") is not None
        probs = None if restored or cfg.domain is not None else eval_logits.probs()
        if probs is None:
            say(progress, f"scoring {len(val)} validation examples")
            probs = predict(setup.model, val, collate_fn, scorer, cfg.train.batch_size, setup.device)
        settings = {"split": "validation", "mode": ccfg.mode, "labels": labels,
                    "class_weights": None if weights is None else weights.tolist()}
        metrics = write_eval(setup.run_dir, cfg.data.eval or cfg.data.train, val_ex, labels, probs, settings)
        summary.update({k: metrics.get(k) for k in ("accuracy", "f1_macro", "auc")})
        say(progress, f"validation: accuracy {metrics['accuracy']:.3f}, macro-F1 {metrics['f1_macro']:.3f}")
    stats = {"format": "classification", "mode": ccfg.mode, "labels": labels, "train_samples": len(train),
             "val_samples": len(val)}
    if cfg.domain is not None:
        if hasattr(setup.model, "domain"):  # dann: trained alongside, never saved; the run is an ordinary classifier
            del setup.model.domain
        stats["domain"] = {"method": cfg.domain.method, "weight": cfg.domain.weight, "target": cfg.domain.target}
    return finish_run(setup, summary, stats)


def domain_adaptation(cfg, setup, collate_fn, weights, progress: bool):
    """(collate with target batches, the step with the domain loss); adds the DANN domain classifier to the model."""
    dcfg = cfg.domain
    texts = load_target_texts(dcfg.target)
    target = TargetBatches(texts, setup.tokenizer, cfg.data.max_length, dcfg.batch_size or cfg.train.batch_size,
                           cfg.train.seed)
    if dcfg.method == "dann":
        head = setup.model.head.weight
        setup.model.domain = DomainClassifier(head.shape[1], dcfg.hidden, head.device, head.dtype)
    say(progress, f"domain adaptation ({dcfg.method}, weight {dcfg.weight:g}): {len(texts)} unlabelled target "
        f"texts from {dcfg.target}")
    return (partial(collate_with_target, base_collate=collate_fn, target=target),
            partial(domain_step, weights=weights, method=dcfg.method, weight=dcfg.weight))
