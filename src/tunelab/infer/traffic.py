"""Served traffic as evidence and as training data: the request log, feedback, PII scrubbing, A/B significance.

`tunelab serve --request-log FILE` appends one JSON line per answered request:

    {"type": "request", "id": "chatcmpl-...", "time": ..., "model": "runA", "route": "chat" | null,
     "user": ..., "messages": [...], "answer": "...", "finish_reason": "stop", "completion_tokens": 12}

`POST /v1/feedback {"id": ..., "rating": 1-5, "outcome": "success" | "failure"}` appends a
`{"type": "feedback", ...}` line to that log and, when the answer came through an A/B route, to the
A/B log, so `tunelab serve-stats --ab-log` can test whether the variants' success rates differ
(`two_proportion_test`). `retrain_records` turns the request log into an SFT data set for
`tunelab retrain` (tunelab.retrain): kept answers are the positively rated (or successful) ones,
de-duplicated per prompt, with PII patterns replaced by placeholders.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SUCCESS = {"success": True, "good": True, "accepted": True, "win": True, "true": True, "1": True,
           "failure": False, "bad": False, "rejected": False, "loss": False, "false": False, "0": False}


def parse_outcome(value: Any) -> bool | None:
    """A feedback outcome as success (True) / failure (False): booleans, 1/0, or one of SUCCESS's words.

    None when absent; a ValueError naming the accepted values otherwise.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    key = str(value).strip().lower()
    if key in SUCCESS:
        return SUCCESS[key]
    raise ValueError(f"outcome {value!r} is not one of {', '.join(sorted(SUCCESS))} (or true/false)")


class JsonlAppender:
    """Appends JSON lines to a file from any thread; each line is written by one call (whole lines only)."""

    def __init__(self, path: str | Path) -> None:
        import threading

        self.path = Path(path)
        self._lock = threading.Lock()

    def append(self, row: dict) -> None:
        line = json.dumps(row, ensure_ascii=False) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)


# ----------------------------------------------------------------------------- PII


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d * 2 > 9 else d * 2
        total += d
    return total % 10 == 0


# order matters: the more specific patterns (ID numbers, cards) go before phone numbers
PII_PATTERNS: dict[str, re.Pattern] = {
    "EMAIL": re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+"),
    "ID": re.compile(r"(?<!\d)[1-9]\d{5}(?:19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[\dXx](?!\d)"),
    "CARD": re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)"),
    "PHONE": re.compile(r"(?<![A-Za-z0-9+])(?:\+?\d{1,3}[ -]?)?(?:1[3-9]\d{9}|\(?\d{3}\)?[ .-]\d{3}[ .-]\d{4})(?!\d)"),
    "IP": re.compile(r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)(?!\.?\d)"),
}
"""Placeholder name -> pattern. Extend it (or pass `patterns=`) for your own identifiers."""


def scrub_pii(text: str, patterns: Mapping[str, re.Pattern] = PII_PATTERNS) -> tuple[str, dict[str, int]]:
    """(text with each PII match replaced by [NAME], {NAME: replacements}).

    Card numbers must pass the Luhn check, so ordinary long numbers stay; Chinese resident ID numbers
    need a valid birth date. Regular expressions catch formats, not names or addresses: review a
    data set before training on it when that matters.
    """
    counts: dict[str, int] = {}

    for name, pattern in patterns.items():
        def sub(m: re.Match, name: str = name) -> str:
            if name == "CARD" and not _luhn(re.sub(r"\D", "", m.group(0))):
                return m.group(0)
            counts[name] = counts.get(name, 0) + 1
            return f"[{name}]"

        text = pattern.sub(sub, text)
    return text, counts


# ----------------------------------------------------------------------------- the log


class TrafficLogError(ValueError):
    """A request log that cannot be read; the message names the file and line."""


def read_log(path: str | Path) -> tuple[list[dict], dict[str, dict]]:
    """(request rows in order, the last feedback row per answer id) of a request log."""
    path = Path(path)
    if not path.is_file():
        raise TrafficLogError(f"{path}: no such request log; start the server with --request-log {path}")
    requests, feedback = [], {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise TrafficLogError(f"{path}:{n}: not JSON ({e.msg}); the log has one JSON object per line") from None
        kind = row.get("type") if isinstance(row, dict) else None
        if kind == "request":
            missing = [k for k in ("id", "messages", "answer") if k not in row]
            if missing:
                raise TrafficLogError(f"{path}:{n}: request row lacks {', '.join(missing)}")
            requests.append(row)
        elif kind == "feedback":
            if "id" not in row:
                raise TrafficLogError(f"{path}:{n}: feedback row lacks id")
            feedback[row["id"]] = row
        else:
            raise TrafficLogError(f"{path}:{n}: type is {kind!r}; expected 'request' or 'feedback' "
                                  "(is this an A/B log? pass the --request-log file)")
    return requests, feedback


def _norm(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).split()).casefold()


@dataclass
class RetrainData:
    """What `retrain_records` kept and why the rest went."""

    records: list[dict] = field(default_factory=list)
    requests: int = 0
    kept: int = 0
    negative: int = 0  # rated below min_rating or outcome failure
    unrated: int = 0  # no feedback (dropped unless include_unrated)
    truncated: int = 0  # stopped at the token limit, or empty
    duplicates: int = 0  # same prompt as a better (or equal, later) kept answer
    other_model: int = 0
    pii: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "records"}


def _score(fb: dict | None, min_rating: float) -> float | None:
    """A kept answer's rank (higher = better), or None to drop it; feedback rating first, then outcome."""
    if fb is None:
        return None
    rating = fb.get("rating")
    success = fb.get("outcome")
    if success is not None and not success:
        return None
    if rating is not None:
        return float(rating) if float(rating) >= min_rating else None
    return float("inf") if success else None


def retrain_records(log: str | Path, *, model: str | None = None, min_rating: float = 4,
                    include_unrated: bool = False, scrub: bool = True) -> RetrainData:
    """SFT records ({"messages": [...]}) from a request log.

    Kept: answers that ended on their own (not at the token limit) whose feedback is positive: a
    rating >= `min_rating`, or outcome success without a rating (a failure outcome drops the answer
    whatever its rating). `include_unrated` also keeps answers nobody rated. Per prompt (normalized
    text of all messages) the best-rated answer stays, the latest on a tie. `model` keeps only answers
    served by that model name. PII is scrubbed from every message (`scrub_pii`).
    """
    requests, feedback = read_log(log)
    out = RetrainData(requests=len(requests))
    best: dict[str, tuple[float, int, dict]] = {}
    for i, row in enumerate(requests):
        if model is not None and row.get("model") != model:
            out.other_model += 1
            continue
        if row.get("finish_reason") not in (None, "stop") or not str(row["answer"]).strip():
            out.truncated += 1
            continue
        fb = feedback.get(row["id"])
        score = _score(fb, min_rating)
        if fb is None and include_unrated:
            score = 0.0
        if score is None:
            if fb is None:
                out.unrated += 1
            else:
                out.negative += 1
            continue
        messages = row["messages"]
        if isinstance(messages, str):  # a text completion's prompt
            messages = [{"role": "user", "content": messages}]
        key = "\x00".join(_norm(f"{m.get('role')}:{m.get('content')}") for m in messages)
        if key in best:
            out.duplicates += 1
            if best[key][0] > score:
                continue
        best[key] = (score, i, {"messages": [*messages, {"role": "assistant", "content": row["answer"]}]})
    for _, _, rec in sorted(best.values(), key=lambda t: t[1]):
        if scrub:
            for m in rec["messages"]:
                if isinstance(m.get("content"), str):
                    m["content"], counts = scrub_pii(m["content"])
                    for k, v in counts.items():
                        out.pii[k] = out.pii.get(k, 0) + v
        out.records.append(rec)
    out.kept = len(out.records)
    return out


# ----------------------------------------------------------------------------- A/B significance


@dataclass(frozen=True)
class ProportionTest:
    """Two-proportion z-test of success rates a vs b."""

    a: str
    b: str
    successes_a: int
    n_a: int
    successes_b: int
    n_b: int
    z: float
    p_value: float
    diff: float  # rate_a - rate_b
    ci95: tuple[float, float]  # of diff (unpooled Wald)


def two_proportion_test(a: str, sa: int, na: int, b: str, sb: int, nb: int) -> ProportionTest:
    """Pooled two-proportion z-test (two-sided), the usual A/B test of conversion rates.

    z = (pa - pb) / sqrt(p (1 - p) (1/na + 1/nb)) with p the pooled rate; p-value 2 (1 - Phi(|z|)).
    Needs both groups non-empty; with rates of exactly 0 or 1 on both sides z is 0 (p = 1).
    """
    if na <= 0 or nb <= 0:
        raise ValueError(f"a two-proportion test needs outcomes on both variants (got {na} for {a}, {nb} for {b})")
    pa, pb = sa / na, sb / nb
    pooled = (sa + sb) / (na + nb)
    se = math.sqrt(pooled * (1 - pooled) * (1 / na + 1 / nb))
    z = (pa - pb) / se if se > 0 else 0.0
    p_value = math.erfc(abs(z) / math.sqrt(2))
    se_diff = math.sqrt(pa * (1 - pa) / na + pb * (1 - pb) / nb)
    z95 = 1.959963984540054
    return ProportionTest(a, b, sa, na, sb, nb, z, p_value, pa - pb, (pa - pb - z95 * se_diff, pa - pb + z95 * se_diff))


def ab_outcomes(rows: Iterable[dict]) -> dict[str, dict[str, tuple[int, int]]]:
    """{route: {variant: (successes, outcomes)}} from the feedback rows of an A/B log (the last per answer id)."""
    last: dict[str, dict] = {}
    for row in rows:
        if row.get("type") == "feedback" and row.get("route") and row.get("success") is not None:
            last[row["id"]] = row
    out: dict[str, dict[str, tuple[int, int]]] = {}
    for row in last.values():
        s, n = out.setdefault(row["route"], {}).get(row["variant"], (0, 0))
        out[row["route"]][row["variant"]] = (s + bool(row["success"]), n + 1)
    return out


def ab_significance(rows: Iterable[dict]) -> dict[str, list[ProportionTest]]:
    """Per route: each variant against the route's most-used one (by outcomes), two-proportion tests."""
    tests: dict[str, list[ProportionTest]] = {}
    for route, variants in sorted(ab_outcomes(rows).items()):
        ranked = sorted(variants.items(), key=lambda kv: (-kv[1][1], kv[0]))
        ref, (sr, nr) = ranked[0]
        tests[route] = [two_proportion_test(v, s, n, ref, sr, nr) for v, (s, n) in ranked[1:]]
    return tests
