"""Token classification (named entities and other tagging): a tag per word from a head on every position.

Data (``tunelab.data.tagging``): CoNLL-style files (word ... tag per line), ``{"tokens", "tags"}`` records, or
``{"text", "spans": [{start, end, label}]}`` records, in BIO or BIOES (``token_classify.scheme``). The model
is the base decoder with a linear head on each position (``tunelab.training.tagging.TagModel``), trained with
the configured method (LoRA, full, ...) by cross-entropy on each word's first sub-token. Validation reports
entity-level precision / recall / F1 (exact type and boundaries, as conlleval / seqeval count them;
``tunelab.eval.entities``) and per-type rows, saved under ``eval/`` with the predicted tags.
"""

from __future__ import annotations

from functools import partial

from tunelab.data.io import DataError
from tunelab.data.tagging import PREFIXES, load_tagging
from tunelab.engine.loop import Recipe, fit
from tunelab.training.heads import HeadMethod
from tunelab.training.setup import finish_run, load_split, recount_parameters, say, setup_run
from tunelab.training.tagging import (
    TagModel,
    collate_tags,
    make_tag_samples,
    predict_tags,
    tag_step,
    write_tag_eval,
)


def resolve_scheme(setting: str, examples) -> str:
    """BIO or BIOES: the configured one, or BIOES when the data's tags use E-/S- (auto)."""
    if setting != "auto":
        return setting
    return "BIOES" if any(t[:2] in ("E-", "S-") for ex in examples for t in ex.tags) else "BIO"


def check_scheme(examples, scheme: str) -> None:
    """Every tag's prefix belongs to the scheme (an E- tag in BIO data is a typo or the wrong scheme)."""
    allowed = PREFIXES[scheme]
    for ex in examples:
        for t in ex.tags:
            if t != "O" and t.partition("-")[0] not in allowed:
                raise DataError(f"{ex.where}: tag {t!r} is not part of the {scheme} scheme; set "
                                "token_classify.scheme to BIOES (or auto), or fix the tag")


def run(cfg, progress: bool = True):
    """Train a tagger end to end and return the run folder path."""
    tcfg = cfg.token_classify
    scheme = tcfg.scheme if tcfg.scheme != "auto" else "BIO"  # span records are read in this scheme
    train_ex, val_ex = load_split(cfg.data, partial(load_tagging, scheme=scheme), cfg.train.seed, stage=cfg.stage)
    scheme = resolve_scheme(tcfg.scheme, train_ex + val_ex)
    check_scheme(train_ex + val_ex, scheme)
    labels = list(tcfg.labels) if tcfg.labels else \
        ["O", *sorted({t for ex in train_ex + val_ex for t in ex.tags} - {"O"})]
    unknown = sorted({t for ex in train_ex for t in ex.tags} - set(labels))
    if unknown:
        raise DataError(f"{cfg.data.train}: tags {unknown[:5]} are not in token_classify.labels; add them there "
                        "(or leave token_classify.labels null)")
    setup = setup_run(cfg, progress)
    tok = setup.tokenizer
    train = make_tag_samples(train_ex, labels, tok, cfg.data.max_length)
    val = make_tag_samples(val_ex, labels, tok, cfg.data.max_length)
    setup.model = TagModel(setup.model, labels, seed=cfg.train.seed, scheme=scheme)
    setup.method = HeadMethod(setup.method)
    recount_parameters(setup)
    collate_fn = partial(collate_tags, pad_id=tok.pad_token_id)
    say(progress, f"token_classify ({scheme}): {len(labels)} tags; {len(train)} train / {len(val)} validation "
        f"sentences from {cfg.data.train}")
    result = fit(setup, Recipe(
        train=cfg.train, optim=cfg.optim, samples=train, val=val, collate=collate_fn, loss=tag_step,
        reference_data=lambda path: make_tag_samples(load_tagging(path, scheme), labels, tok, cfg.data.max_length)),
        progress=progress)
    summary = dict(result.summary)
    if val:
        pred = predict_tags(setup.model, val, tok.pad_token_id, cfg.train.batch_size, setup.device)
        metrics = write_tag_eval(setup.run_dir, cfg.data.eval or cfg.data.train, val_ex, pred, scheme)
        summary.update({k: metrics[k] for k in ("precision", "recall", "f1", "f1_macro", "word_accuracy")})
        say(progress, f"validation: entity F1 {metrics['f1']:.3f} (precision {metrics['precision']:.3f}, recall "
            f"{metrics['recall']:.3f}), word accuracy {metrics['word_accuracy']:.3f}")
    stats = {"format": "tagging", "scheme": scheme, "labels": labels, "train_samples": len(train),
             "val_samples": len(val)}
    return finish_run(setup, summary, stats)

