"""A text-field view of a record, shared by every preparation tool.

Records stay plain dicts in their own format (Alpaca, ShareGPT, OpenAI messages, preference,
classification, raw text). `text_fields` lists the strings in a record that are *text*, each with
a path back into the record and a side:

- ``system``: system prompts (Alpaca ``system``, ShareGPT/messages system turns);
- ``input``: what the model reads (instruction, input, user/human/tool turns, history questions,
  ``text``, ``prompt``, ``query``);
- ``output``: what the model learns to write (output, assistant/gpt turns, history answers,
  ``chosen``/``rejected``, ``response``).

`map_text` rewrites those strings in a copy of the record, so clean/augment work on every format
without knowing it, and labels, ids and other fields are never touched.
"""

from __future__ import annotations

import copy
import hashlib
import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Literal

Side = Literal["system", "input", "output"]
Path = tuple[Any, ...]

# Top-level string fields and their side. Order is the order text is read in.
FIELD_SIDES: dict[str, Side] = {
    "system": "system", "instruction": "input", "input": "input", "query": "input", "prompt": "input",
    "text": "input", "output": "output", "response": "output", "chosen": "output", "rejected": "output",
}
# Speaker of a ShareGPT turn (`from`) or a message (`role`) -> side.
ROLE_SIDES: dict[str, Side] = {
    "system": "system", "human": "input", "user": "input", "observation": "input", "tool": "input",
    "function": "input", "gpt": "output", "assistant": "output", "function_call": "output", "bot": "output",
    "model": "output",
}
HISTORY_SIDES: tuple[Side, Side] = ("input", "output")  # Alpaca history pairs: [question, answer]
TURN_LISTS: dict[str, tuple[str, str]] = {"conversations": ("from", "value"), "messages": ("role", "content")}


@dataclass(frozen=True)
class TextField:
    """One string of a record: where it lives (`path` into the dict), its role name and its side."""

    path: Path
    name: str
    side: Side
    text: str


def _turn_fields(turns: Any, key: str, who_key: str, text_key: str) -> Iterable[TextField]:
    if not isinstance(turns, list):
        return
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            continue
        who = str(turn.get(who_key, ""))
        side = ROLE_SIDES.get(who, "input")
        content = turn.get(text_key)
        if isinstance(content, str):
            yield TextField((key, i, text_key), who or key, side, content)
        elif isinstance(content, list):  # multimodal content parts: [{"type": "text", "text": ...}, ...]
            for j, part in enumerate(content):
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    yield TextField((key, i, text_key, j, "text"), who or key, side, part["text"])


def text_fields(record: dict[str, Any]) -> list[TextField]:
    """Every text string of `record`, in reading order, with its path and side (see the module docstring)."""
    out: list[TextField] = []
    if isinstance(record.get("system"), str):
        out.append(TextField(("system",), "system", "system", record["system"]))
    history = record.get("history")
    if isinstance(history, list):
        for i, pair in enumerate(history):
            if isinstance(pair, (list, tuple)) and len(pair) == 2:
                for j, side in enumerate(HISTORY_SIDES):
                    if isinstance(pair[j], str):
                        out.append(TextField(("history", i, j), f"history.{side}", side, pair[j]))
    for key, (who_key, text_key) in TURN_LISTS.items():
        out.extend(_turn_fields(record.get(key), key, who_key, text_key))
    for key, side in FIELD_SIDES.items():
        if key == "system":
            continue
        value = record.get(key)
        if isinstance(value, str):
            out.append(TextField((key,), key, side, value))
        elif isinstance(value, dict):  # preference turns stored as one {from, value} / {role, content}
            for text_key in ("value", "content"):
                if isinstance(value.get(text_key), str):
                    out.append(TextField((key, text_key), key, side, value[text_key]))
                    break
    return out


def _set(record: dict[str, Any], path: Path, value: str) -> None:
    node: Any = record
    for step in path[:-1]:
        node = node[step]
    if isinstance(node, tuple):  # history pairs may be tuples in Python-built records
        raise TypeError("history pairs must be lists to be rewritten")
    node[path[-1]] = value


def map_text(record: dict[str, Any], fn: Callable[[TextField], str],
             sides: Iterable[Side] | None = None) -> dict[str, Any]:
    """A deep copy of `record` whose text fields (only those on `sides`, default all) are replaced by `fn(field)`."""
    wanted = set(sides) if sides is not None else None
    out = copy.deepcopy(record)
    if isinstance(out.get("history"), list):
        out["history"] = [list(p) if isinstance(p, tuple) else p for p in out["history"]]
    for f in text_fields(record):
        if wanted is None or f.side in wanted:
            _set(out, f.path, fn(f))
    return out


def record_text(record: dict[str, Any], sep: str = "\n") -> str:
    """All text of a record joined by `sep`: what length limits and near-duplicate detection look at."""
    return sep.join(f.text for f in text_fields(record))


_WS = re.compile(r"\s+")


def normalize_key(text: str) -> str:
    """Canonical form for comparing texts: NFKC, case-folded, runs of whitespace collapsed."""
    return _WS.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def record_key(record: dict[str, Any]) -> str:
    """SHA-1 of a record's normalized text fields with their role names: equal keys = exact duplicates.

    Only text counts (labels and ids do not), and role names are part of the key so that
    "A" as a question and "A" as an answer are not taken for the same record.
    """
    h = hashlib.sha1()
    for f in text_fields(record):
        h.update(f"{f.name}\x1f{normalize_key(f.text)}\x1e".encode())
    return h.hexdigest()


def is_cjk(ch: str) -> bool:
    """True for Han ideographs, kana and hangul (scripts written without spaces between words)."""
    o = ord(ch)
    return (0x4E00 <= o <= 0x9FFF or 0x3400 <= o <= 0x4DBF or 0x20000 <= o <= 0x2EBEF or 0xF900 <= o <= 0xFAFF
            or 0x3040 <= o <= 0x30FF or 0xAC00 <= o <= 0xD7AF)


def cjk_share(text: str) -> float:
    """Share of CJK characters among the letters of `text` (0.0 when it has no letters)."""
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return 0.0
    return sum(is_cjk(c) for c in letters) / len(letters)


def is_cjk_text(text: str, threshold: float = 0.3) -> bool:
    """Whether `text` should be treated as Chinese/Japanese/Korean (character-level) rather than spaced words."""
    return cjk_share(text) >= threshold


def join_text(a: str, b: str) -> str:
    """Join two pieces of one utterance: no space between CJK characters, one space otherwise."""
    if not a:
        return b
    if not b:
        return a
    if is_cjk(a[-1]) or is_cjk(b[0]) or unicodedata.category(a[-1]).startswith("P") and not a[-1].isascii():
        return a + b
    return f"{a} {b}"
