"""Rule-based text augmentation: synonym replacement, reordering, random deletion and insertion.

The four operations follow EDA (Wei & Zou, "EDA: Easy Data Augmentation Techniques for Boosting
Performance on Text Classification Tasks", EMNLP 2019), with Chinese words cut by jieba and a small
synonym table shipped in ``resources/synonyms.json`` (no downloads, works offline).

By default only the *input side* of a record is changed (instruction/input, user turns,
classification ``text``, ``prompt``): the answer stays exactly as written, so an augmented record is
still correct. Changing answers teaches the model to write the noise; opt in with
``sides=("input", "output")`` only for data where that is acceptable.

Every operation is a pure function ``(text, rng, rate) -> text`` in `AUGMENTERS`; copies are seeded
per (seed, record, operation, copy), so results do not depend on which other operations run.
"""

from __future__ import annotations

import json
import random
import re
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from tunelab.data.prepare.result import PrepResult, RecordLike, positioned
from tunelab.data.prepare.text import Side, is_cjk_text, map_text

Augmenter = Callable[[str, random.Random, float], str]


_PLUGGED: dict[str, Any] = {"groups": [], "replace": False}  # set by use_synonyms


def shipped_groups() -> list[list[str]]:
    """The synonym groups shipped in resources/synonyms.json (Chinese, then English)."""
    raw = json.loads(resources.files("tunelab.data.prepare").joinpath("resources/synonyms.json").read_text("utf-8"))
    return [*raw["zh"], *raw["en"]]


# a Cilin (同义词词林扩展版) line: an 8-character code ending in '=' (synonyms), '#' (related) or '@' (alone)
_CILIN = re.compile(r"^[A-Za-z]{2}\d{2}[A-Za-z]\d{2}([=#@])\s*(.*)$")


def load_synonym_groups(path: str | Path) -> list[list[str]]:
    """Synonym groups from a file, to plug a larger resource in (`use_synonyms`).

    Formats: JSON (`{"zh": [[...], ...], "en": [[...], ...]}` like the shipped table, or a plain list
    of groups); or text, one group per line: a Cilin line (`Aa01A01= 人 士 人物`; only `=` lines are
    synonyms, `#` related-word and `@` single-word lines are skipped) or words separated by spaces,
    commas or tabs. Blank lines and lines starting with `//` are skipped; a group needs 2+ words.
    """
    from tunelab.data.io import DataError

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such synonym file")
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix == ".json":
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: not JSON ({e.msg})") from None
        groups = [g for lang in ("zh", "en") for g in raw.get(lang, [])] if isinstance(raw, dict) else raw
        bad = next((i for i, g in enumerate(groups)
                    if not (isinstance(g, list) and all(isinstance(w, str) for w in g))), None)
        if bad is not None:
            raise DataError(f"{path}: group {bad} is not a list of words")
        return [g for g in groups if len(g) >= 2]
    groups = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("//"):
            continue
        m = _CILIN.match(line)
        if m:
            if m.group(1) != "=":
                continue
            line = m.group(2)
        words = [w for w in re.split(r"[\s,，、]+", line) if w]
        if len(words) >= 2:
            groups.append(words)
    return groups


def use_synonyms(paths: Iterable[str | Path] = (), replace: bool = False) -> int:
    """Plug synonym files in (`load_synonym_groups`) for every later synonym/insert operation; returns the
    number of groups in use. `replace` drops the shipped table; no paths and replace=False restores it."""
    groups = [g for p in paths for g in load_synonym_groups(p)]
    if replace and not groups:
        raise ValueError("replace=True needs at least one synonym file with groups")
    _PLUGGED.update(groups=groups, replace=replace)
    synonym_table.cache_clear()
    _jieba.cache_clear()
    return len(groups) + (0 if replace else len(shipped_groups()))


@lru_cache(maxsize=1)
def synonym_table() -> dict[str, list[str]]:
    """word -> its synonyms (other words of its groups): the shipped Chinese and English table plus the
    groups plugged in with `use_synonyms`."""
    table: dict[str, list[str]] = {}
    groups = _PLUGGED["groups"] if _PLUGGED["replace"] else [*shipped_groups(), *_PLUGGED["groups"]]
    for group in groups:
        for w in group:
            others = table.setdefault(w.casefold(), [])
            others.extend(o for o in group if o != w and o not in others)
    return table


@lru_cache(maxsize=1)
def _jieba():
    import logging

    import jieba

    jieba.setLogLevel(logging.WARNING)
    tok = jieba.Tokenizer()  # a private instance: our extra words do not change jieba for other code
    for word in synonym_table():
        if is_cjk_text(word):
            tok.add_word(word)
    return tok


_EN_TOKEN = re.compile(r"\s+|\w+(?:[-']\w+)*|[^\w\s]")


def _split_known(word: str, table: dict[str, list[str]], longest: int = 4) -> list[str]:
    """Cut a jieba word further where it is made of table words ("非常高兴" -> "非常", "高兴"), else keep it."""
    if len(word) <= 2 or word in table:
        return [word]
    parts, i = [], 0
    while i < len(word):
        n = next((n for n in range(min(longest, len(word) - i), 1, -1) if word[i:i + n] in table), 1)
        if n == 1 and parts and parts[-1] not in table:
            parts[-1] += word[i]
        else:
            parts.append(word[i:i + n])
        i += n
    return parts if any(p in table for p in parts) else [word]


def tokenize(text: str) -> list[str]:
    """Cut text into tokens that join back to it exactly: jieba words for Chinese, words/spaces/punctuation else.

    Chinese words that jieba keeps whole but that are made of synonym-table words are cut into
    those words, so idioms like "非常高兴" can still be varied.
    """
    if is_cjk_text(text):
        table = synonym_table()
        return [part for word in _jieba().cut(text) for part in _split_known(word, table)]
    return _EN_TOKEN.findall(text)


def _is_word(tok: str) -> bool:
    return any(c.isalnum() for c in tok)


def _match_case(src: str, word: str) -> str:
    return word[:1].upper() + word[1:] if src[:1].isupper() else word


def _tidy(tokens: list[str], cjk: bool) -> str:
    text = "".join(tokens)
    if cjk:
        return text
    text = re.sub(r"[^\S\n]{2,}", " ", text)
    return re.sub(r" ([,.!?;:])", r"\1", text).strip(" ")


def synonym_replace(text: str, rng: random.Random, rate: float) -> str:
    """Replace each word that has synonyms in the table with a random one, with probability `rate`."""
    table = synonym_table()
    out = []
    for tok in tokenize(text):
        syns = table.get(tok.casefold())
        out.append(_match_case(tok, rng.choice(syns)) if syns and rng.random() < rate else tok)
    return "".join(out)


def random_delete(text: str, rng: random.Random, rate: float) -> str:
    """Delete each word with probability `rate` (punctuation and spaces stay; at least one word is kept)."""
    tokens = tokenize(text)
    words = [i for i, t in enumerate(tokens) if _is_word(t)]
    drop = {i for i in words if rng.random() < rate}
    if words and len(drop) == len(words):
        drop.discard(rng.choice(words))
    return _tidy([t for i, t in enumerate(tokens) if i not in drop], is_cjk_text(text))


def random_insert(text: str, rng: random.Random, rate: float) -> str:
    """Insert round(rate * words) (at least one when rate > 0) synonyms of the text's own words at random places.

    When no word of the text has a synonym in the table, a copy of one of its words is inserted.
    """
    tokens = tokenize(text)
    words = [t for t in tokens if _is_word(t)]
    if not words or rate <= 0:
        return text
    cjk = is_cjk_text(text)
    table = synonym_table()
    for _ in range(max(1, round(rate * len(words)))):
        with_syn = [w for w in words if table.get(w.casefold())]
        new = rng.choice(table[rng.choice(with_syn).casefold()]) if with_syn else rng.choice(words)
        if cjk:
            tokens.insert(rng.randrange(len(tokens) + 1), new)
        else:
            spaces = [i for i, t in enumerate(tokens) if t.isspace()]
            at = rng.choice(spaces) + 1 if spaces else len(tokens)
            tokens[at:at] = [new, " "] if spaces else [" ", new]
    return _tidy(tokens, cjk)


_SENT_END = re.compile(r"(?:[。！？!?…]+[”」』\"']?|\.(?=\s|$))[^\S\n]*")
_CLAUSE_END = re.compile(r"[，,；;、][^\S\n]*")


def _segments(text: str, delim: re.Pattern[str]) -> tuple[list[str], list[str]]:
    bodies, seps, pos = [], [], 0
    for m in delim.finditer(text):
        bodies.append(text[pos:m.start()])
        seps.append(m.group())
        pos = m.end()
    if pos < len(text):
        bodies.append(text[pos:])
        seps.append("")
    return bodies, seps


def reorder(text: str, rng: random.Random, rate: float) -> str:
    """Move sentences (or, in a one-sentence text, clauses): each is picked with probability `rate` and the
    picked ones are shuffled among themselves. Punctuation stays in place."""
    bodies, seps = _segments(text, _SENT_END)
    if len([b for b in bodies if b.strip()]) < 2:
        bodies, seps = _segments(text, _CLAUSE_END)
    if len(bodies) < 2:
        return text
    moving = [i for i in range(len(bodies)) if rng.random() < rate]
    if len(moving) >= 2:
        order = moving[:]
        rng.shuffle(order)
        if order == moving:  # a shuffle that changes nothing: rotate instead, so chosen segments really move
            order = order[1:] + order[:1]
        moved = [bodies[j] for j in order]
        for i, body in zip(moving, moved):
            bodies[i] = body
    return "".join(b + s for b, s in zip(bodies, seps))


AUGMENTERS: dict[str, Augmenter] = {
    "synonym": synonym_replace,
    "reorder": reorder,
    "delete": random_delete,
    "insert": random_insert,
}


def augment(records: Sequence[RecordLike], *, ops: Iterable[str] = ("synonym",), rate: float = 0.1, copies: int = 1,
            seed: int = 0, sides: Iterable[Side] = ("input",), keep_original: bool = True) -> PrepResult:
    """Add `copies` augmented copies per record and operation, each right after its original.

    `rate` is each operation's per-word (per-sentence for ``reorder``) probability. Only text on
    `sides` changes (default: the input side, so answers stay correct). A copy identical to its
    original is not added (counted as ``unchanged``). Counts: ``input``, ``kept`` (records out),
    ``augmented`` and one count per operation.
    """
    ops = list(ops)
    unknown = [o for o in ops if o not in AUGMENTERS]
    if unknown or not ops:
        raise ValueError(f"unknown augmentation(s) {unknown or ops}; choose from {list(AUGMENTERS)}")
    if not 0.0 <= rate <= 1.0 or copies < 1:
        raise ValueError(f"need 0 <= rate <= 1 and copies >= 1 (got rate={rate}, copies={copies})")
    sides = tuple(sides)
    result = PrepResult(kept=[])
    for i, (rec, _where) in enumerate(positioned(records)):
        result.counts["input"] += 1
        if keep_original:
            result.kept.append(rec)
        for op in ops:
            for c in range(copies):
                rng = random.Random(f"{seed}:{i}:{op}:{c}")
                new = map_text(rec, lambda f: AUGMENTERS[op](f.text, rng, rate) if f.text else f.text, sides)
                if new == rec:
                    result.counts["unchanged"] += 1
                    continue
                result.counts["augmented"] += 1
                result.counts[op] += 1
                result.kept.append(new)
    result.counts["kept"] = len(result.kept)
    return result
