"""Drift: how far live prompts (input drift) and live answers (output drift) have moved from what the run saw.

A `DriftProfile` summarizes the training prompts (the user side of each example):

- length: the share of prompts in each of `bins` token-length bins (edges at training quantiles);
- script: the share of prompts written mostly in CJK characters, Latin letters, or neither;
- tokens: the frequency of the `top_k` most common training tokens, plus one bucket for all others;
- centroid: the mean input embedding of all training prompt tokens (the model's embedding matrix).

`DriftMonitor` keeps the last `window` live prompts and compares them with the profile:

| component | measure | range |
|---|---|---|
| `length`   | population stability index (PSI) of the length bins, mapped by 1 - exp(-PSI) | 0..1 |
| `script`   | total variation distance of the script shares | 0..1 |
| `tokens`   | Jensen-Shannon divergence (base 2) of the token buckets | 0..1 |
| `centroid` | cosine distance of the mean embeddings, clipped to 0..1 | 0..1 |

The drift score is their weighted mean (equal weights by default). PSI is the credit-scoring
measure (Yurdakul, "Statistical properties of population stability index", 2018; PSI > 0.25
is read there as a significant shift, which maps to 0.22 here). JS divergence is Lin (1991),
"Divergence measures based on the Shannon entropy". A small window of live prompts differs
from the training set by sampling noise alone (mostly in `tokens`), so the warning threshold
applies only after `min_requests` prompts and should be set from a held-out split of the
training data (the `score` of held-out prompts is the noise floor; see docs/serving.md).

**Output drift** (concept drift seen in the answers) compares live answers with an `OutputProfile`
of the run's validation outputs (its predictions from `tunelab eval`, or reference answers):

| component | measure | range |
|---|---|---|
| `length`   | PSI of answer token-length bins, mapped by 1 - exp(-PSI) | 0..1 |
| `refusal`  | absolute difference of the refusal rates (`is_refusal`: "I'm sorry, I can't...") | 0..1 |
| `format`   | total variation distance of the answer-format shares (`answer_format`) | 0..1 |
| `centroid` | cosine distance of the answers' mean token embedding (answer-embedding shift) | 0..1 |

The same monitor keeps the last answers per model, exports every component and the live refusal
rate, mean length and format shares on /metrics, and logs a warning when the score, or the refusal
component alone, is above the threshold.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tunelab.utils.io import atomic_write_json

log = logging.getLogger("tunelab.serve.drift")

SCRIPTS = ("cjk", "latin", "other")
COMPONENTS = ("length", "script", "tokens", "centroid")
EPS = 1e-4  # floor for empty bins, so PSI and JS stay finite


def char_script(ch: str) -> str | None:
    """'cjk' for Han, kana and hangul; 'latin' for Latin letters; None for everything else."""
    o = ord(ch)
    if 0x4E00 <= o <= 0x9FFF or 0x3400 <= o <= 0x4DBF or 0x3040 <= o <= 0x30FF or 0xAC00 <= o <= 0xD7AF \
            or 0xF900 <= o <= 0xFAFF or 0x20000 <= o <= 0x2A6DF:
        return "cjk"
    if ch.isalpha() and (o < 0x80 or 0xC0 <= o <= 0x24F):
        return "latin"
    return None


def text_script(text: str) -> str:
    """The script most of a text's letters are in ('cjk', 'latin'), or 'other' when it has none of either."""
    counts = Counter(s for s in map(char_script, text) if s)
    if not counts:
        return "other"
    return max(SCRIPTS[:2], key=lambda s: counts.get(s, 0))


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index: sum((a - e) * ln(a / e)) over bins, with empty bins floored at EPS."""
    e, a = np.clip(expected, EPS, None), np.clip(actual, EPS, None)
    return float(np.sum((a - e) * np.log(a / e)))


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence in bits (0 = same distribution, 1 = disjoint)."""
    p, q = p / p.sum(), q / q.sum()
    m = 0.5 * (p + q)

    def kl(x: np.ndarray) -> float:
        nz = x > 0
        return float(np.sum(x[nz] * np.log2(x[nz] / m[nz])))

    return 0.5 * kl(p) + 0.5 * kl(q)


@dataclass
class DriftProfile:
    """Summary of the training prompts; saved as JSON (no pickle) next to a run."""

    n_texts: int
    length_edges: list[float]  # inner bin edges, len bins - 1
    length_probs: list[float]  # len bins
    script_share: dict[str, float]
    token_ids: list[int]  # top_k ids
    token_probs: list[float]  # len top_k + 1 (last: every other token)
    centroid: list[float]  # (H,)
    meta: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | Path) -> Path:
        """Write the profile as JSON, atomically."""
        return atomic_write_json(path, asdict(self))

    @classmethod
    def load(cls, path: str | Path) -> DriftProfile:
        """Read a profile written by `save`; a clear error names the file and the missing key."""
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        missing = [k for k in ("n_texts", "length_edges", "length_probs", "script_share", "token_ids",
                               "token_probs", "centroid") if k not in data]
        if missing:
            raise ValueError(f"{path}: not a drift profile (missing {', '.join(missing)}); "
                             "make one with `tunelab serve-profile`")
        return cls(**data)


def _token_ids(texts: Iterable[str], tokenizer) -> list[list[int]]:
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def _centroid(ids: list[list[int]], embeddings: torch.Tensor) -> np.ndarray:
    flat = torch.tensor([i for row in ids for i in row], dtype=torch.long)
    if flat.numel() == 0:
        return np.zeros(embeddings.shape[1])
    with torch.no_grad():
        return embeddings.detach()[flat.to(embeddings.device)].float().mean(0).cpu().numpy()  # (H,)


def _length_probs(lengths: np.ndarray, inner_edges: np.ndarray) -> np.ndarray:
    counts = np.bincount(np.searchsorted(inner_edges, lengths, side="right"), minlength=len(inner_edges) + 1)
    return counts / max(len(lengths), 1)


def _script_share(texts: list[str]) -> dict[str, float]:
    counts = Counter(map(text_script, texts))
    return {s: counts.get(s, 0) / max(len(texts), 1) for s in SCRIPTS}


def _token_probs(ids: list[list[int]], top: list[int]) -> np.ndarray:
    index = {t: i for i, t in enumerate(top)}
    counts = np.zeros(len(top) + 1)
    for row in ids:
        for t in row:
            counts[index.get(t, len(top))] += 1
    return counts / max(counts.sum(), 1)


def build_profile(texts: list[str], tokenizer, embeddings: torch.Tensor, *, bins: int = 10,
                  top_k: int = 1000) -> DriftProfile:
    """Profile training prompts: length bins, script shares, top-k token frequencies, mean embedding."""
    if not texts:
        raise ValueError("no prompt texts to profile; the data has no user/instruction/prompt/text fields")
    ids = _token_ids(texts, tokenizer)
    lengths = np.array([len(r) for r in ids])
    inner = np.unique(np.quantile(lengths, np.linspace(0, 1, bins + 1)[1:-1]))
    freq = Counter(t for row in ids for t in row)
    top = [t for t, _ in freq.most_common(top_k)]
    return DriftProfile(
        n_texts=len(texts), length_edges=inner.tolist(), length_probs=_length_probs(lengths, inner).tolist(),
        script_share=_script_share(texts), token_ids=top, token_probs=_token_probs(ids, top).tolist(),
        centroid=_centroid(ids, embeddings).tolist(),
        meta={"vocab_size": int(embeddings.shape[0]), "tokenizer": type(tokenizer).__name__})


@dataclass(frozen=True)
class DriftReport:
    """Component distances, the weighted score and whether it crossed the threshold."""

    components: dict[str, float]
    score: float
    n: int
    alert: bool
    stats: dict[str, float] = field(default_factory=dict)  # output drift: live refusal rate, mean length, formats


DEFAULT_WEIGHTS: Mapping[str, float] = {c: 1.0 for c in COMPONENTS}


def drift_report(profile: DriftProfile, texts: list[str], tokenizer, embeddings: torch.Tensor, *,
                 weights: Mapping[str, float] = DEFAULT_WEIGHTS, threshold: float = 0.25) -> DriftReport:
    """Compare live prompts with a profile (see the module docstring for each component)."""
    ids = _token_ids(texts, tokenizer)
    lengths = np.array([len(r) for r in ids])
    inner = np.array(profile.length_edges)
    live_script = _script_share(texts)
    c_train, c_live = np.array(profile.centroid), _centroid(ids, embeddings)
    denom = float(np.linalg.norm(c_train) * np.linalg.norm(c_live))
    cos = float(c_train @ c_live) / denom if denom > 0 else 0.0
    comps = {
        "length": 1.0 - math.exp(-psi(np.array(profile.length_probs), _length_probs(lengths, inner))),
        "script": 0.5 * sum(abs(profile.script_share.get(s, 0.0) - live_script[s]) for s in SCRIPTS),
        "tokens": js_divergence(np.array(profile.token_probs), _token_probs(ids, profile.token_ids)),
        "centroid": min(max(1.0 - cos, 0.0), 1.0),
    }
    total = sum(weights.get(c, 0.0) for c in COMPONENTS)
    score = sum(weights.get(c, 0.0) * comps[c] for c in COMPONENTS) / total
    return DriftReport(comps, score, len(texts), score > threshold)


class DriftMonitor:
    """Keeps the last `window` live prompts of one model and scores them every `every` prompts."""

    def __init__(self, model: str, profile: DriftProfile | OutputProfile, tokenizer, embeddings: torch.Tensor, *,
                 window: int = 200, min_requests: int = 20, every: int = 10, threshold: float = 0.25,
                 weights: Mapping[str, float] | None = None,
                 on_report: Callable[[str, DriftReport], None] | None = None) -> None:
        """An `OutputProfile` makes it watch answers (output drift); a `DriftProfile` prompts (input drift)."""
        self.outputs = isinstance(profile, OutputProfile)
        weights = weights or (OUTPUT_WEIGHTS if self.outputs else DEFAULT_WEIGHTS)
        self.model, self.profile, self.tokenizer, self.embeddings = model, profile, tokenizer, embeddings
        self.texts: deque[str] = deque(maxlen=window)
        self.min_requests, self.every, self.threshold, self.weights = min_requests, every, threshold, weights
        self.on_report = on_report
        self.seen = 0
        self.last: DriftReport | None = None
        self.lock = threading.Lock()

    def observe(self, text: str) -> DriftReport | None:
        """Add one live prompt (or answer, for output drift); returns a new report when one was computed (and logs
        a warning above threshold)."""
        with self.lock:
            self.texts.append(text)
            self.seen += 1
            if len(self.texts) < self.min_requests or self.seen % self.every:
                return None
            texts = list(self.texts)
        score = output_drift_report if self.outputs else drift_report
        report = score(self.profile, texts, self.tokenizer, self.embeddings, weights=self.weights,
                       threshold=self.threshold)
        self.last = report
        if report.alert:
            parts = ", ".join(f"{k}={v:.3f}" for k, v in {**report.components, **report.stats}.items())
            what = ("output", "answers") if self.outputs else ("input", "prompts")
            log.warning("%s drift on model %s: score %.3f > %.3f over the last %d %s (%s)", what[0],
                        self.model, report.score, self.threshold, report.n, what[1], parts)
        if self.on_report is not None:
            self.on_report(self.model, report)
        return report


def prompt_text(row: Mapping[str, Any]) -> str | None:
    """The user side of one training example (messages, sharegpt, alpaca, prompt or text formats)."""
    for key in ("messages", "conversations"):
        turns = row.get(key)
        if isinstance(turns, list):
            users = [t.get("content", t.get("value")) for t in turns if isinstance(t, Mapping)
                     and t.get("role", t.get("from")) in ("user", "human")]
            return "\n".join(u for u in users if isinstance(u, str)) or None
    if isinstance(row.get("instruction"), str):
        extra = row.get("input")
        return row["instruction"] + ("\n" + extra if isinstance(extra, str) and extra else "")
    for key in ("prompt", "question", "text"):
        if isinstance(row.get(key), str):
            return row[key]
    return None


def prompt_texts(path: str | Path) -> list[str]:
    """Prompt texts of a .json/.jsonl training file (see prompt_text); an error names the first unusable line."""
    from tunelab.data.io import DataError
    from tunelab.data.sources import read_any

    texts = []
    for rec in read_any(path):
        text = prompt_text(rec.data) if isinstance(rec.data, Mapping) else None
        if text is None:
            raise DataError(f"{rec.where}: no prompt found (expected messages, conversations, instruction, "
                            "prompt or text)")
        texts.append(text)
    return texts


# ----------------------------------------------------------------------------- output drift

OUTPUT_COMPONENTS = ("length", "refusal", "format", "centroid")
OUTPUT_WEIGHTS: Mapping[str, float] = {c: 1.0 for c in OUTPUT_COMPONENTS}
FORMATS = ("empty", "json", "code", "list", "plain")
_REFUSAL = re.compile(
    r"(?i)\b(?:i'?m sorry|i am sorry|i apologi[sz]e|i can(?:'|no)?t (?:help|assist|provide|answer|do)|"
    r"i'?m (?:not able|unable) to|i am (?:not able|unable) to|i won'?t|as an ai\b)"
    r"|抱歉|对不起|很遗憾|我无法|我不能|无法(?:提供|回答|协助)|不能(?:提供|回答|协助)"
    r"|作为(?:一个)?(?:AI|人工智能)")
_LIST_LINE = re.compile(r"^\s*(?:[-*•]|\d+[.)、])\s+\S", re.M)


def is_refusal(text: str) -> bool:
    """Whether an answer declines (English or Chinese refusal phrases in its first 200 characters)."""
    return bool(_REFUSAL.search(text[:200]))


def answer_format(text: str) -> str:
    """The shape of an answer: 'empty', 'json' (parses as an object/array), 'code' (a ``` fence), 'list'
    (two or more bullet/numbered lines) or 'plain'."""
    stripped = text.strip()
    if not stripped:
        return "empty"
    if stripped[0] in "[{":
        try:
            json.loads(stripped)
            return "json"
        except ValueError:
            pass
    if "```" in stripped:
        return "code"
    if len(_LIST_LINE.findall(stripped)) >= 2:
        return "list"
    return "plain"


def _format_share(texts: list[str]) -> dict[str, float]:
    counts = Counter(map(answer_format, texts))
    return {f: counts.get(f, 0) / max(len(texts), 1) for f in FORMATS}


@dataclass
class OutputProfile:
    """Summary of a run's validation outputs (answers); saved as JSON (no pickle)."""

    n_texts: int
    length_edges: list[float]
    length_probs: list[float]
    refusal_rate: float
    format_share: dict[str, float]
    centroid: list[float]  # (H,) mean token embedding of the answers
    meta: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | Path) -> Path:
        """Write the profile as JSON, atomically (with "kind": "outputs", so it is not taken for an input profile)."""
        return atomic_write_json(path, {"kind": "outputs", **asdict(self)})

    @classmethod
    def load(cls, path: str | Path) -> OutputProfile:
        """Read a profile written by `save`; a clear error names the file and what is wrong."""
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.pop("kind", None) != "outputs":
            raise ValueError(f"{path}: not an output profile; make one with `tunelab serve-output-profile` "
                             "(an input profile from serve-profile goes to --drift-profile)")
        missing = [k for k in ("n_texts", "length_edges", "length_probs", "refusal_rate", "format_share",
                               "centroid") if k not in data]
        if missing:
            raise ValueError(f"{path}: output profile lacks {', '.join(missing)}; rebuild it with "
                             "`tunelab serve-output-profile`")
        return cls(**data)


def build_output_profile(texts: list[str], tokenizer, embeddings: torch.Tensor, *, bins: int = 10) -> OutputProfile:
    """Profile validation answers: length bins, refusal rate, format shares, mean token embedding."""
    if not texts:
        raise ValueError("no answers to profile; the file has no predictions or assistant answers")
    ids = _token_ids(texts, tokenizer)
    lengths = np.array([len(r) for r in ids])
    inner = np.unique(np.quantile(lengths, np.linspace(0, 1, bins + 1)[1:-1]))
    return OutputProfile(
        n_texts=len(texts), length_edges=inner.tolist(), length_probs=_length_probs(lengths, inner).tolist(),
        refusal_rate=sum(map(is_refusal, texts)) / len(texts), format_share=_format_share(texts),
        centroid=_centroid(ids, embeddings).tolist(),
        meta={"vocab_size": int(embeddings.shape[0]), "tokenizer": type(tokenizer).__name__})


def output_drift_report(profile: OutputProfile, texts: list[str], tokenizer, embeddings: torch.Tensor, *,
                        weights: Mapping[str, float] = OUTPUT_WEIGHTS, threshold: float = 0.25) -> DriftReport:
    """Compare live answers with an output profile (components in the module docstring); `stats` holds the
    live refusal_rate, mean_tokens and format_<name> shares. Alert: the score or the refusal component
    above `threshold`."""
    ids = _token_ids(texts, tokenizer)
    lengths = np.array([len(r) for r in ids])
    refusal = sum(map(is_refusal, texts)) / max(len(texts), 1)
    formats = _format_share(texts)
    c_ref, c_live = np.array(profile.centroid), _centroid(ids, embeddings)
    denom = float(np.linalg.norm(c_ref) * np.linalg.norm(c_live))
    cos = float(c_ref @ c_live) / denom if denom > 0 else 0.0
    comps = {
        "length": 1.0 - math.exp(-psi(np.array(profile.length_probs),
                                      _length_probs(lengths, np.array(profile.length_edges)))),
        "refusal": abs(refusal - profile.refusal_rate),
        "format": 0.5 * sum(abs(profile.format_share.get(f, 0.0) - formats[f]) for f in FORMATS),
        "centroid": min(max(1.0 - cos, 0.0), 1.0),
    }
    total = sum(weights.get(c, 0.0) for c in OUTPUT_COMPONENTS)
    score = sum(weights.get(c, 0.0) * comps[c] for c in OUTPUT_COMPONENTS) / total
    stats = {"refusal_rate": refusal, "mean_tokens": float(lengths.mean()) if len(lengths) else 0.0,
             **{f"format_{f}": v for f, v in formats.items()}}
    # a change in refusals is a change of behaviour even when lengths and formats hold, and (unlike the
    # format shares) it is quiet on held-out answers, so it alone can raise the alert
    return DriftReport(comps, score, len(texts), score > threshold or comps["refusal"] > threshold, stats)


def answer_texts(path: str | Path) -> list[str]:
    """Answers of a file: the `prediction` of each row of a `tunelab eval` predictions file, else the last
    assistant turn of each record of a data file (messages, sharegpt, alpaca `output`, `response`)."""
    from tunelab.data.io import DataError, read_records

    texts = []
    for rec in read_records(path):
        row = rec.data if isinstance(rec.data, Mapping) else {}
        text = row.get("prediction")
        for key in ("messages", "conversations"):
            turns = row.get(key)
            if text is None and isinstance(turns, list):
                answers = [t.get("content", t.get("value")) for t in turns if isinstance(t, Mapping)
                           and t.get("role", t.get("from")) in ("assistant", "gpt")]
                text = answers[-1] if answers else None
        for key in ("output", "response", "answer", "completion"):
            if text is None and isinstance(row.get(key), str):
                text = row[key]
        if not isinstance(text, str):
            raise DataError(f"{rec.where}: no answer found (expected prediction, an assistant turn, output, "
                            "response, answer or completion)")
        texts.append(text)
    return texts
