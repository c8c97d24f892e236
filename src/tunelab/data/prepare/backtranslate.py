"""Back-translation augmentation: source -> pivot language -> source, through a model the user points at.

A paraphrase that keeps the meaning (Sennrich et al., "Improving Neural Machine Translation Models with
Monolingual Data", ACL 2016; used for text classification by Xie et al., "Unsupervised Data
Augmentation", NeurIPS 2020). The model is any `Generator` (chat messages -> reply text):
`hf_generator` for a local model, `endpoint_generator` for an OpenAI-compatible server (`tunelab
serve`, vLLM, llama.cpp's server). As with the rule-based operations only the input side changes by
default, so answers stay correct.

A round trip is kept only when it looks like a paraphrase: the pivot text is in the pivot script (a
model that echoes or answers instead of translating fails here), the result is non-empty, in the
source script (CJK for zh, not for en), not identical to the original, and of similar length (`min_ratio`..`max_ratio` of
the original's characters); otherwise the record goes to the rejected rows with the reason, so a model
that answers the text instead of translating it, or translates into the wrong language, is caught.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from tunelab.data.prepare.generate import Generator
from tunelab.data.prepare.result import PrepResult, RecordLike, positioned, rejected_row
from tunelab.data.prepare.text import Side, is_cjk_text, map_text

LANGUAGES = {"zh": "Chinese", "en": "English"}
PROMPT = ("Translate the following {src} text into {dst}. Keep its meaning, names and numbers. Reply with the "
          "translation only.\n\n{text}")
_PREFIX = re.compile(r"^\s*(?:translation|译文|翻译)\s*[:：]\s*", re.I)


def endpoint_generator(url: str, model: str | None = None, api_key: str | None = None, *, max_tokens: int = 512,
                       temperature: float = 0.0, client=None, timeout_s: float = 120.0) -> Generator:
    """A `Generator` backed by an OpenAI-compatible `POST /v1/chat/completions` (model: the first served one)."""
    import httpx

    base = url.rstrip("/")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    http = client or httpx.Client(timeout=timeout_s)

    def call(method: str, path: str, **kw) -> dict:
        try:
            resp = http.request(method, base + path, headers=headers, **kw)
        except httpx.HTTPError as e:
            raise ValueError(f"{base}{path} is unreachable ({e}); start the server (e.g. `tunelab serve RUN`)"
                             ) from None
        if resp.status_code != 200:
            raise ValueError(f"{base}{path} answered HTTP {resp.status_code}: {resp.text[:300]}")
        return resp.json()

    name = model or call("GET", "/v1/models")["data"][0]["id"]

    def generate(messages: list[dict[str, str]]) -> str:
        out = call("POST", "/v1/chat/completions", json={"model": name, "messages": messages,
                                                          "temperature": temperature, "max_tokens": max_tokens})
        return str(out["choices"][0]["message"]["content"] or "")

    return generate


def _clean_reply(text: str) -> str:
    text = _PREFIX.sub("", text.strip())
    if len(text) >= 2 and text[0] + text[-1] in ('""', "“”", "''", "「」"):
        text = text[1:-1].strip()
    return text


def round_trip(generate: Generator, text: str, source: str, pivot: str) -> tuple[str, str]:
    """(pivot text, back-translated text) of one text."""
    ask = [{"role": "user", "content": PROMPT.format(src=LANGUAGES[source], dst=LANGUAGES[pivot], text=text)}]
    middle = _clean_reply(generate(ask))
    back = [{"role": "user", "content": PROMPT.format(src=LANGUAGES[pivot], dst=LANGUAGES[source], text=middle)}]
    return middle, _clean_reply(generate(back))


def check_paraphrase(original: str, back: str, source: str, min_ratio: float, max_ratio: float,
                     middle: str | None = None, pivot: str | None = None) -> str | None:
    """Why `back` is not a usable paraphrase of `original`, or None. With `middle` (the pivot text) and
    `pivot`, a first leg that did not translate (the model echoed or answered in the source language)
    is caught too: "pivot_wrong_language"."""
    if middle is not None and pivot is not None and (not middle or (pivot == "zh") != is_cjk_text(middle)):
        return "pivot_wrong_language"
    if not back:
        return "empty"
    if (source == "zh") != is_cjk_text(back):
        return "wrong_language"
    if " ".join(back.split()).casefold() == " ".join(original.split()).casefold():
        return "unchanged"
    ratio = len(back) / max(len(original), 1)
    if not min_ratio <= ratio <= max_ratio:
        return "length"
    return None


def back_translate(records: Sequence[RecordLike], generate: Generator, *, direction: str = "zh-en",
                   sides: Iterable[Side] = ("input",), keep_original: bool = True, min_ratio: float = 0.5,
                   max_ratio: float = 2.0) -> PrepResult:
    """Add one back-translated copy per record, right after it (`direction` "zh-en": zh -> en -> zh).

    Every text on `sides` goes through the round trip (each distinct text once); a record whose texts
    do not all pass `check_paraphrase` is rejected with the first reason. Counts: input, kept,
    back_translated, and one per rejection reason.
    """
    source, _, pivot = direction.partition("-")
    if source not in LANGUAGES or pivot not in LANGUAGES or source == pivot:
        raise ValueError(f"--back-translate {direction!r}: use SOURCE-PIVOT with two of {', '.join(LANGUAGES)} "
                         "(zh-en for Chinese data, en-zh for English)")
    sides = tuple(sides)
    cache: dict[str, tuple[str, str | None]] = {}
    result = PrepResult(kept=[])
    for i, (rec, where) in enumerate(positioned(records)):
        result.counts["input"] += 1
        if keep_original:
            result.kept.append(rec)
        problems: list[tuple[str, str]] = []

        def translate(field: Any) -> str:
            text = field.text
            if not text or not text.strip():
                return text
            if text not in cache:
                middle, back = round_trip(generate, text, source, pivot)
                cache[text] = (back, check_paraphrase(text, back, source, min_ratio, max_ratio, middle, pivot))
                cache[text + "\x00pivot"] = (middle, None)
            back, why = cache[text]
            if why:
                problems.append((why, f"{text[:60]!r} -> {cache[text + chr(0) + 'pivot'][0][:60]!r} -> {back[:60]!r}"))
            return back

        new = map_text(rec, translate, sides)
        if problems:
            result.counts[f"rejected {problems[0][0]}"] += 1
            result.rejected.append(rejected_row(i, where, f"back_translation_{problems[0][0]}", rec, problems[0][1]))
            continue
        result.counts["back_translated"] += 1
        result.kept.append(new)
    result.counts["kept"] = len(result.kept)
    return result
