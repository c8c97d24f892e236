"""Evaluation metrics: generation (BLEU-4, ROUGE, exact match, contains), classification, perplexity.

Generation metrics share one signature, `fn(preds, refs) -> {name: score}`, and live in the
`GENERATION_METRICS` registry so `tunelab eval --metrics bleu4,rouge` is a dict lookup.
All generation scores are on a 0-100 scale (the way papers report BLEU and ROUGE);
classification scores are fractions in [0, 1] (the way scikit-learn reports them).

Chinese text: the language is detected per corpus from the share of CJK characters in the
references (`lang="auto"`). BLEU then uses sacrebleu's `zh` tokenizer (each CJK character is a
token, the WMT convention, so scores are comparable with published Chinese BLEU), and ROUGE
segments words with jieba (rouge-score's own tokenizer drops every non-ASCII character, which
would score all Chinese text as empty).
"""

from __future__ import annotations

import importlib
import logging
import math
import re
import unicodedata
import warnings
from collections.abc import Callable, Sequence
from typing import Any

GenerationMetric = Callable[[Sequence[str], Sequence[str]], dict[str, float]]

# CJK Unified Ideographs (+ Extension A), CJK punctuation, kana and full-width forms.
_CJK = re.compile(r"[\u3000-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef]")
_WORD = re.compile(r"[^\W_]+")  # letters and digits; for ASCII the same as rouge-score's [a-z0-9]+
CJK_THRESHOLD = 0.3  # share of CJK among non-space characters above which a corpus counts as Chinese


def _require(module: str):
    """Import an optional dependency of the eval extra, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError:
        raise ImportError(f"tunelab.eval.metrics needs the package {module!r}; "
                          "install it with `pip install 'tunelab[eval]'`") from None


def _check_lengths(preds: Sequence[Any], refs: Sequence[Any]) -> None:
    if len(preds) != len(refs):
        raise ValueError(f"got {len(preds)} predictions but {len(refs)} references; "
                         "each prediction needs exactly one reference entry")
    if not preds:
        raise ValueError("no predictions to score: the evaluation set is empty")


def cjk_share(texts: Sequence[str]) -> float:
    """Fraction of non-space characters in `texts` that are CJK (0.0 for empty input)."""
    chars = [c for t in texts for c in t if not c.isspace()]
    return sum(1 for c in chars if _CJK.match(c)) / len(chars) if chars else 0.0


def detect_lang(texts: Sequence[str]) -> str:
    """'zh' when more than CJK_THRESHOLD of the characters are CJK, else 'en'."""
    return "zh" if cjk_share(texts) > CJK_THRESHOLD else "en"


def _resolve_lang(lang: str, refs: Sequence[str]) -> str:
    if lang == "auto":
        return detect_lang(refs)
    if lang not in ("zh", "en"):
        raise ValueError(f"lang must be 'auto', 'zh' or 'en' (got {lang!r})")
    return lang


def normalize(text: str) -> str:
    """NFKC (full-width -> ASCII forms), strip, collapse whitespace, case-fold: the form EM compares."""
    return " ".join(unicodedata.normalize("NFKC", text).split()).casefold()


def bleu4(preds: Sequence[str], refs: Sequence[str | Sequence[str]], *, lang: str = "auto") -> dict[str, float]:
    """Corpus BLEU-4 (Papineni et al., 2002) via sacrebleu, 0-100.

    `refs[i]` is one reference string or a list of references for prediction i. Chinese
    (detected or `lang="zh"`) uses sacrebleu's `zh` tokenizer, English its default `13a`.
    """
    _check_lengths(preds, refs)
    sacrebleu = _require("sacrebleu")
    per_example = [[r] if isinstance(r, str) else list(r) for r in refs]
    n_refs = max(len(r) for r in per_example)
    # sacrebleu wants one stream per reference position; a missing extra reference is None.
    streams = [[r[k] if k < len(r) else None for r in per_example] for k in range(n_refs)]
    lang = _resolve_lang(lang, [t for r in per_example for t in r])
    score = sacrebleu.corpus_bleu(list(preds), streams, tokenize="zh" if lang == "zh" else "13a")
    return {"bleu4": float(score.score)}


class _RougeTokenizer:
    """rouge-score tokenizer: jieba words for Chinese, lower-cased letter/digit runs otherwise."""

    def __init__(self, lang: str):
        self.lang = lang
        if lang == "zh":
            self._jieba = _require("jieba")
            self._jieba.setLogLevel(logging.WARNING)

    def tokenize(self, text: str) -> list[str]:
        text = unicodedata.normalize("NFKC", text).lower()
        if self.lang == "zh":
            # keep words, drop punctuation and whitespace tokens
            return [t for t in self._jieba.lcut(text) if _WORD.search(t)]
        return _WORD.findall(text)


def rouge(preds: Sequence[str], refs: Sequence[str], *, lang: str = "auto") -> dict[str, float]:
    """Mean ROUGE-1/2/L F1 (Lin, 2004) via rouge-score, 0-100, with jieba segmentation for Chinese."""
    _check_lengths(preds, refs)
    rouge_scorer = _require("rouge_score.rouge_scorer")
    tokenizer = _RougeTokenizer(_resolve_lang(lang, refs))
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=tokenizer)
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for pred, ref in zip(preds, refs):
        scores = scorer.score(ref, pred)  # rouge-score takes (target, prediction)
        for key in totals:
            totals[key] += scores[key].fmeasure
    return {key: 100.0 * value / len(preds) for key, value in totals.items()}


def exact_match(preds: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
    """Percentage of predictions equal to their reference after `normalize`."""
    _check_lengths(preds, refs)
    hits = sum(normalize(p) == normalize(r) for p, r in zip(preds, refs))
    return {"exact_match": 100.0 * hits / len(preds)}


def contains(preds: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
    """Percentage of predictions that contain their (normalized) reference: lenient EM for chatty answers."""
    _check_lengths(preds, refs)
    hits = sum(normalize(r) in normalize(p) for p, r in zip(preds, refs))
    return {"contains": 100.0 * hits / len(preds)}


_NUMBER = r"-?\d+(?:\.\d+)?"
_BOX = re.compile(rf"[\[(]\s*({_NUMBER})\s*,\s*({_NUMBER})\s*\)?\s*,\s*\(?\s*({_NUMBER})\s*,\s*({_NUMBER})\s*[\])]")


def parse_box(text: str) -> tuple[float, float, float, float] | None:
    """The first box in a grounding answer: `[x1, y1, x2, y2]` or Qwen-VL's `(x1,y1),(x2,y2)`; None if none."""
    m = _BOX.search(text or "")
    if m is None:
        return None
    x1, y1, x2, y2 = (float(v) for v in m.groups())
    return min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)


def box_iou(preds: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
    """Intersection over union of the predicted and reference boxes, over examples whose reference has a box.

    A prediction without a box scores 0. Returns the mean IoU, the share with IoU >= 0.5 (the usual
    grounding accuracy, Acc@0.5) and how many references had a box.
    """
    _check_lengths(preds, refs)
    ious = []
    for p, r in zip(preds, refs):
        ref = parse_box(r)
        if ref is None:
            continue
        box = parse_box(p)
        if box is None:
            ious.append(0.0)
            continue
        w = max(0.0, min(box[2], ref[2]) - max(box[0], ref[0]))
        h = max(0.0, min(box[3], ref[3]) - max(box[1], ref[1]))
        inter = w * h
        union = (box[2] - box[0]) * (box[3] - box[1]) + (ref[2] - ref[0]) * (ref[3] - ref[1]) - inter
        ious.append(inter / union if union > 0 else float(box == ref))
    if not ious:
        return {"box_iou": 0.0, "box_iou@0.5": 0.0, "boxes": 0}
    return {"box_iou": sum(ious) / len(ious), "box_iou@0.5": sum(i >= 0.5 for i in ious) / len(ious),
            "boxes": len(ious)}


GENERATION_METRICS: dict[str, GenerationMetric] = {
    "bleu4": bleu4,
    "rouge": rouge,
    "exact_match": exact_match,
    "contains": contains,
    "box_iou": box_iou,
}


def generation_metrics(names: Sequence[str], preds: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
    """Run several registered generation metrics and merge their results into one dict."""
    unknown = [n for n in names if n not in GENERATION_METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(map(repr, unknown))}; "
                         f"choose from {', '.join(GENERATION_METRICS)}")
    out: dict[str, float] = {}
    for name in names:
        out.update(GENERATION_METRICS[name](preds, refs))
    return out


def _auc(y_true: Sequence[Any], probs: Sequence[Sequence[float]], labels: Sequence[Any]) -> float:
    """ROC AUC: positive-class probability for two labels, one-vs-rest macro average for more."""
    from sklearn.metrics import roc_auc_score

    if len(labels) == 2:
        # the second label is the positive class; its column holds P(positive)
        return float(roc_auc_score([y == labels[1] for y in y_true], [row[1] for row in probs]))
    # sklearn wants `labels` sorted; class indices are, in the order the columns of `probs` follow
    index = {label: i for i, label in enumerate(labels)}
    return float(roc_auc_score([index[y] for y in y_true], [list(row) for row in probs], multi_class="ovr",
                               labels=list(range(len(labels))), average="macro"))


def classification_metrics(y_true: Sequence[Any], y_pred: Sequence[Any], labels: Sequence[Any],
                           probs: Sequence[Sequence[float]] | None = None, other: Any = None) -> dict[str, Any]:
    """Accuracy, macro precision/recall/F1, per-class F1, confusion matrix and (with `probs`) ROC AUC.

    `labels` fixes the class order used by the confusion matrix (rows = true, columns =
    predicted) and by the columns of `probs` (one row of class probabilities per example).
    AUC is None, with the reason in "auc_error", when it is undefined (e.g. a class never occurs).
    With `other` set, a prediction outside `labels` (a generated answer that names no class)
    counts as wrong, is tallied in "n_other" and gets its own last confusion-matrix column; the
    macro averages stay over `labels` only.
    """
    _check_lengths(y_pred, y_true)
    _require("sklearn")
    from sklearn import metrics as skm

    labels = list(labels)
    known = set(labels)
    n_other = 0
    if other is not None:
        n_other = sum(v not in known for v in y_pred)
        y_pred = [v if v in known else other for v in y_pred]
    for name, values in (("y_true", y_true), ("y_pred", y_pred)):
        bad = sorted({repr(v) for v in values if v not in known and not (name == "y_pred" and v == other)})
        if bad:
            raise ValueError(f"{name} has label(s) {', '.join(bad)} that are not in labels {labels!r}; "
                             "add them to labels or fix the data")
    p, r, f, _ = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels, average="macro",
                                                     zero_division=0)
    per_class = skm.f1_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    out: dict[str, Any] = {
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "precision_macro": float(p),
        "recall_macro": float(r),
        "f1_macro": float(f),
        "f1_per_class": {str(lab): float(v) for lab, v in zip(labels, per_class)},
        "labels": [str(lab) for lab in labels],
        "confusion_matrix": skm.confusion_matrix(y_true, y_pred,
                                                 labels=labels + [other] if n_other else labels).tolist(),
    }
    if other is not None:
        out["n_other"] = n_other
    if probs is not None:
        if len(probs) != len(y_true):
            raise ValueError(f"probs has {len(probs)} rows but there are {len(y_true)} examples")
        for i, row in enumerate(probs):
            if len(row) != len(labels):
                raise ValueError(f"probs row {i} has {len(row)} values; expected one per label ({len(labels)})")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                auc: float | None = _auc(y_true, probs, labels)
                error = "; ".join(str(w.message) for w in caught) or "undefined"
            except ValueError as e:  # older scikit-learn raises where newer warns and returns nan
                auc, error = None, str(e)
        if auc is None or math.isnan(auc):  # e.g. only one class present in y_true
            out["auc"], out["auc_error"] = None, error
        else:
            out["auc"] = auc
    return out


def perplexity(total_nll: float, n_tokens: int) -> float:
    """exp(mean negative log-likelihood per target token); `total_nll` is the summed NLL in nats."""
    if n_tokens <= 0:
        raise ValueError(f"perplexity needs at least one target token (got n_tokens={n_tokens})")
    mean = total_nll / n_tokens
    return math.exp(mean) if mean < 709.0 else math.inf  # exp overflows a float past ~709
