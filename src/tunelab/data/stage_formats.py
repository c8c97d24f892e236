"""Record formats of the non-SFT stages: preference pairs, KTO examples, raw text and labelled classification data.

Like `tunelab.data.formats`, each format is a pure function `parse(record) -> example` in a registry with
auto-detection from the record's keys, and a bad record raises DataError naming its file, line and field.

    preference  {"conversations": [...ShareGPT...], "chosen": {"from": "gpt", "value"}, "rejected": {...}}
                {"prompt": str | messages, "chosen": str | messages, "rejected": str | messages}   (TRL style)
    kto         {"messages": [..., {"role": "assistant", ...}], "label": bool}
                {"prompt": str | messages, "completion": str | messages, "label": bool}           (TRL style)
    text        .txt: one document per line; .json/.jsonl: {"text": str}
    classify    {"text": str, "label": str | int}; {"messages": [...], "label": ...} (the final assistant
                turn, if any, is the answer and is not part of the input)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.data.formats import Conversation, parse_messages, parse_sharegpt
from tunelab.data.io import DataError, Record
from tunelab.data.sources import read_any
from tunelab.utils.userfiles import read_text

Messages = list[dict[str, str]]


@dataclass
class PreferenceExample:
    """A prompt (messages ending with a user turn) and two answers, the chosen one preferred."""

    prompt: Messages
    chosen: str
    rejected: str
    where: str = ""


@dataclass
class KtoExample:
    """A prompt and one answer labelled desirable (True) or undesirable (False)."""

    prompt: Messages
    completion: str
    label: bool
    where: str = ""


@dataclass
class TextDocument:
    """One raw-text document for continued pretraining."""

    text: str
    where: str = ""


@dataclass
class ClassExample:
    """An input (raw text, or a prompt as messages) and its class label.

    `answer` is the final assistant turn of a messages record (e.g. `\\boxed{体育}`); label-token scoring
    uses it as the pattern in which each label is written.
    """

    label: str
    text: str | None = None
    prompt: Messages | None = None
    answer: str | None = None
    where: str = ""


def _answer(rec: Record, key: str, value: Any) -> str:
    """An answer given as a string, a ShareGPT turn {from, value}, or messages ending with the assistant."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("value", value.get("content")), str):
        return value.get("value", value.get("content"))
    if isinstance(value, list) and value and isinstance(value[-1], dict) \
            and isinstance(value[-1].get("content"), str):
        return value[-1]["content"]
    raise DataError(f"{rec.where}: field '{key}' must be a string, a {{from, value}} turn or a messages list "
                    f"ending with the answer; got {type(value).__name__}")


def _prompt(rec: Record, value: Any) -> Messages:
    if isinstance(value, str) and value:
        return [{"role": "user", "content": value}]
    if isinstance(value, list) and value:
        return parse_messages(Record({"messages": value}, rec.where)).messages
    raise DataError(f"{rec.where}: field 'prompt' must be a non-empty string or messages list")


def _check_prompt(rec: Record, msgs: Messages) -> Messages:
    if not msgs or msgs[-1]["role"] != "user":
        raise DataError(f"{rec.where}: the prompt must end with a user turn (got "
                        f"{msgs[-1]['role'] if msgs else 'nothing'}); the answers follow it")
    return msgs


def parse_preference_sharegpt(rec: Record) -> PreferenceExample:
    """LLaMA-Factory ranking data: ShareGPT `conversations` (the prompt) + `chosen` / `rejected` turns."""
    for key in ("chosen", "rejected"):
        if key not in rec.data:
            raise DataError(f"{rec.where}: field '{key}' is missing (preference records need chosen and rejected)")
    conv: Conversation = parse_sharegpt(rec)
    return PreferenceExample(_check_prompt(rec, conv.messages), _answer(rec, "chosen", rec.data["chosen"]),
                             _answer(rec, "rejected", rec.data["rejected"]), rec.where)


def parse_preference_prompt(rec: Record) -> PreferenceExample:
    """TRL-style pairs: `prompt` (string or messages) + `chosen` / `rejected` (string or messages)."""
    for key in ("prompt", "chosen", "rejected"):
        if key not in rec.data:
            raise DataError(f"{rec.where}: field '{key}' is missing (preference records need prompt, chosen "
                            "and rejected)")
    return PreferenceExample(_check_prompt(rec, _prompt(rec, rec.data["prompt"])),
                             _answer(rec, "chosen", rec.data["chosen"]),
                             _answer(rec, "rejected", rec.data["rejected"]), rec.where)


PREFERENCE_FORMATS: dict[str, Callable[[Record], PreferenceExample]] = {
    "sharegpt": parse_preference_sharegpt,
    "prompt": parse_preference_prompt,
}


def _label(rec: Record) -> bool:
    value = rec.data.get("label")
    if not isinstance(value, bool):
        raise DataError(f"{rec.where}: field 'label' must be true (desirable) or false (undesirable), "
                        f"got {value!r}")
    return value


def parse_kto_messages(rec: Record) -> KtoExample:
    """LLaMA-Factory KTO data: `messages` ending with the assistant's answer + boolean `label`."""
    msgs = parse_messages(rec).messages
    if msgs[-1]["role"] != "assistant":
        raise DataError(f"{rec.where}: the last message must be the assistant's answer being labelled")
    return KtoExample(_check_prompt(rec, msgs[:-1]), msgs[-1]["content"], _label(rec), rec.where)


def parse_kto_prompt(rec: Record) -> KtoExample:
    """TRL-style unpaired data: `prompt` + `completion` + boolean `label`."""
    for key in ("prompt", "completion"):
        if key not in rec.data:
            raise DataError(f"{rec.where}: field '{key}' is missing (KTO records need prompt, completion, label)")
    return KtoExample(_check_prompt(rec, _prompt(rec, rec.data["prompt"])),
                      _answer(rec, "completion", rec.data["completion"]), _label(rec), rec.where)


KTO_FORMATS: dict[str, Callable[[Record], KtoExample]] = {"messages": parse_kto_messages, "prompt": parse_kto_prompt}


def parse_class_text(rec: Record) -> ClassExample:
    """`text` + `label` (string or integer)."""
    text = rec.data.get("text")
    if not isinstance(text, str) or not text:
        raise DataError(f"{rec.where}: field 'text' must be a non-empty string")
    return ClassExample(_class_label(rec), text=text, where=rec.where)


def parse_class_messages(rec: Record) -> ClassExample:
    """`messages` + `label`; a final assistant turn is the written answer, not part of the input."""
    msgs = parse_messages(rec).messages
    answer = None
    if msgs[-1]["role"] == "assistant":
        answer, msgs = msgs[-1]["content"], msgs[:-1]
    return ClassExample(_class_label(rec), prompt=_check_prompt(rec, msgs), answer=answer, where=rec.where)


def _class_label(rec: Record) -> str:
    value = rec.data.get("label")
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise DataError(f"{rec.where}: field 'label' must be a non-empty string or an integer, got {value!r}")
    return str(value)


CLASS_FORMATS: dict[str, Callable[[Record], ClassExample]] = {"text": parse_class_text,
                                                              "messages": parse_class_messages}


def _detect(rec: Record, keys_to_format: list[tuple[str, str]], what: str) -> str:
    for key, name in keys_to_format:
        if key in rec.data:
            return name
    raise DataError(f"{rec.where}: cannot tell the {what} format from keys {sorted(rec.data)}; expected "
                    + " or ".join(f"'{k}' ({n})" for k, n in keys_to_format))


def _parse_all(path: str | Path, registry: dict, detect: list[tuple[str, str]], what: str) -> list:
    records = read_any(path)
    if not records:
        raise DataError(f"{path}: no records (the file is empty)")
    parse = registry[_detect(records[0], detect, what)]
    return [parse(rec) for rec in records]


def load_preference(path: str | Path) -> list[PreferenceExample]:
    """Read preference pairs (ShareGPT conversations + chosen/rejected, or prompt/chosen/rejected)."""
    return _parse_all(path, PREFERENCE_FORMATS, [("conversations", "sharegpt"), ("prompt", "prompt")], "preference")


def load_kto(path: str | Path) -> list[KtoExample]:
    """Read KTO examples (messages + label, or prompt/completion/label)."""
    return _parse_all(path, KTO_FORMATS, [("messages", "messages"), ("prompt", "prompt")], "KTO")


def load_classification(path: str | Path) -> list[ClassExample]:
    """Read labelled examples (text + label, or messages + label)."""
    return _parse_all(path, CLASS_FORMATS, [("text", "text"), ("messages", "messages")], "classification")


def load_text(path: str | Path) -> list[TextDocument]:
    """Raw documents: a .txt file holds one per non-empty line; .json/.jsonl records hold a `text` string."""
    path = Path(path)
    if path.suffix == ".txt":
        if not path.is_file():
            raise DataError(f"{path}: file not found")
        lines = read_text(path, DataError).splitlines()
        docs = [TextDocument(line, f"{path}:{i}") for i, line in enumerate(lines, 1) if line.strip()]
    else:
        docs = []
        for rec in read_any(path):
            text = rec.data.get("text") if isinstance(rec.data, dict) else None
            if not isinstance(text, str):
                raise DataError(f"{rec.where}: field 'text' is missing or not a string (raw-text records are "
                                '{"text": "..."}; or use a .txt file with one document per line)')
            if text.strip():
                docs.append(TextDocument(text, rec.where))
    if not docs:
        raise DataError(f"{path}: no non-empty documents")
    return docs
