"""Token-classification (tagging, NER) data: CoNLL-style files and JSON span records -> words with tags.

Every example becomes a list of words and one tag per word (``O``, ``B-PER``, ``I-PER``, ``E-PER``, ``S-PER``),
so BIO and BIOES data, CoNLL files and character-offset spans meet in one form:

    CoNLL       any file that is not .json/.jsonl: one word per line, its tag in the last column (other
                columns ignored), a blank line between sentences, ``-DOCSTART-`` lines skipped.
    tokens      {"tokens": ["John", "lives", "in", "Paris"], "tags": ["B-PER", "O", "O", "B-LOC"]}
                (``ner_tags`` is read as ``tags`` when it holds strings)
    spans       {"text": "John lives in Paris", "spans": [{"start": 0, "end": 4, "label": "PER"}, ...]}
                (``entities`` is read as ``spans``; a span may be ``[start, end, label]``); the text is split
                into words by `split_words` (CJK characters one by one) and each span must start and end on
                word boundaries; its words get B-/I- tags (BIO), or B-/I-/E-/S- (BIOES).

A bad line or record raises DataError naming the file and line (or record) and the fix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tunelab.data.io import DataError, read_records
from tunelab.utils.userfiles import read_text

PREFIXES = {"BIO": ("B", "I"), "BIOES": ("B", "I", "E", "S")}

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
WORD = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+|[^\w\s]")
"""A word: one CJK character, a run of other letters/digits, or one punctuation mark."""


@dataclass
class TagExample:
    """A sentence as words, one tag per word; `where` names its file and line (or record)."""

    words: list[str]
    tags: list[str]
    where: str = ""


def split_words(text: str) -> list[tuple[str, int, int]]:
    """(word, start, end) character spans of `text` (see WORD): how span records and raw inputs are split."""
    return [(m.group(), m.start(), m.end()) for m in WORD.finditer(text)]


def check_tag(tag: str, where: str) -> None:
    """A tag is ``O`` or ``<B|I|E|S>-<type>``; anything else is a DataError naming `where`."""
    if tag == "O":
        return
    prefix, dash, kind = tag.partition("-")
    if not dash or prefix not in PREFIXES["BIOES"] or not kind:
        raise DataError(f"{where}: tag {tag!r} is not O or B-/I-/E-/S- followed by a type (e.g. B-PER); "
                        "tags follow the BIO or BIOES scheme")


def spans_to_tags(n_words: int, spans: list[tuple[int, int, str]], scheme: str) -> list[str]:
    """Tags for `n_words` words from word-index spans [start, end) with labels, in BIO or BIOES."""
    tags = ["O"] * n_words
    for start, end, label in spans:
        if scheme == "BIOES" and end - start == 1:
            tags[start] = f"S-{label}"
            continue
        tags[start] = f"B-{label}"
        for i in range(start + 1, end):
            tags[i] = f"I-{label}"
        if scheme == "BIOES":
            tags[end - 1] = f"E-{label}"
    return tags


def _span_fields(span, where: str) -> tuple[int, int, str]:
    if isinstance(span, dict):
        start, end, label = span.get("start"), span.get("end"), span.get("label", span.get("type"))
    elif isinstance(span, (list, tuple)) and len(span) == 3:
        start, end, label = span
    else:
        raise DataError(f"{where}: a span must be {{\"start\": int, \"end\": int, \"label\": str}} or "
                        f"[start, end, label], got {span!r:.80}")
    if isinstance(start, bool) or isinstance(end, bool) or not isinstance(start, int) or not isinstance(end, int) \
            or not isinstance(label, str) or not label or "-" in label and label[:2] in ("B-", "I-", "E-", "S-"):
        raise DataError(f"{where}: span {span!r:.80}: start and end must be character offsets (integers) and "
                        "label an entity type like PER (no B-/I- prefix)")
    return start, end, label


def parse_span_record(data: dict, where: str, scheme: str) -> TagExample:
    """A {"text", "spans"} record as words and tags; spans must fall on word boundaries and not overlap."""
    text = data.get("text")
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{where}: 'text' must be a non-empty string")
    raw = data.get("spans", data.get("entities", []))
    if not isinstance(raw, list):
        raise DataError(f"{where}: 'spans' must be a list of {{start, end, label}}")
    words = split_words(text)
    starts = {s: i for i, (_, s, _) in enumerate(words)}
    ends = {e: i for i, (_, _, e) in enumerate(words)}
    spans, taken = [], set()
    for span in raw:
        start, end, label = _span_fields(span, where)
        if not 0 <= start < end <= len(text):
            raise DataError(f"{where}: span [{start}, {end}) {label} is outside the text (length {len(text)})")
        if start not in starts or end not in ends:
            raise DataError(f"{where}: span [{start}, {end}) {text[max(start, 0):end]!r} {label} does not start and "
                            "end on word boundaries (words are split as tunelab.data.tagging.split_words does: "
                            "CJK characters one by one, letter/digit runs, punctuation); fix its offsets")
        first, last = starts[start], ends[end]
        if taken & set(range(first, last + 1)):
            raise DataError(f"{where}: span [{start}, {end}) {label} overlaps another span; tagging needs "
                            "non-overlapping entities")
        taken |= set(range(first, last + 1))
        spans.append((first, last + 1, label))
    return TagExample([w for w, _, _ in words], spans_to_tags(len(words), spans, scheme), where)


def parse_token_record(data: dict, where: str) -> TagExample:
    """A {"tokens", "tags"} record (``ner_tags`` read as tags when they are strings)."""
    words, tags = data.get("tokens"), data.get("tags", data.get("ner_tags"))
    if not isinstance(words, list) or not words or not all(isinstance(w, str) and w for w in words):
        raise DataError(f"{where}: 'tokens' must be a non-empty list of non-empty strings")
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise DataError(f"{where}: 'tags' must be a list of tag strings like \"B-PER\" (integer ner_tags need "
                        "their names; write the names)")
    if len(tags) != len(words):
        raise DataError(f"{where}: {len(words)} tokens but {len(tags)} tags; give one tag per token")
    for t in tags:
        check_tag(t, where)
    return TagExample(list(words), list(tags), where)


def read_conll(path: str | Path) -> list[TagExample]:
    """Sentences of a CoNLL-style file: word ... tag per line, blank lines between sentences."""
    path = Path(path)
    out: list[TagExample] = []
    words: list[str] = []
    tags: list[str] = []
    first = 0
    lines = read_text(path, DataError).splitlines()
    for lineno, line in enumerate([*lines, ""], start=1):
        cols = line.split()
        if not cols or cols[0] == "-DOCSTART-":
            if words:
                out.append(TagExample(words, tags, f"{path}:{first}"))
            words, tags = [], []
            continue
        if len(cols) < 2:
            raise DataError(f"{path}:{lineno}: expected 'word tag' (columns separated by spaces or tabs, the tag "
                            f"last), got {line.strip()!r:.80}")
        check_tag(cols[-1], f"{path}:{lineno}")
        if not words:
            first = lineno
        words.append(cols[0])
        tags.append(cols[-1])
    return out


def load_tagging(path: str | Path, scheme: str = "BIO") -> list[TagExample]:
    """Tagged sentences of a file: CoNLL-style text, or .json/.jsonl token or span records (module docstring).

    `scheme` (BIO or BIOES) is how span records are turned into tags; token records and CoNLL files keep
    their own tags.
    """
    path = Path(path)
    if path.suffix.lower() not in (".json", ".jsonl"):
        examples = read_conll(path)
    else:
        examples = []
        for rec in read_records(path):
            if "tokens" in rec.data:
                examples.append(parse_token_record(rec.data, rec.where))
            elif "text" in rec.data:
                examples.append(parse_span_record(rec.data, rec.where, scheme))
            else:
                raise DataError(f"{rec.where}: a tagging record needs 'tokens' + 'tags', or 'text' + 'spans' "
                                f"(keys found: {sorted(rec.data)[:8]})")
    if not examples:
        raise DataError(f"{path}: no tagged sentences found")
    return examples
