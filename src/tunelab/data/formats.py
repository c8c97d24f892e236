"""Record formats -> one internal Conversation type, with auto-detection and precise errors.

Each format is a pure function `parse(record) -> Conversation` in the FORMATS registry;
`detect_format` looks at a record's keys. A bad record raises DataError naming its file,
line (or index) and field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from tunelab.data.io import DataError, Record

ROLES = ("system", "user", "assistant", "tool")


@dataclass
class Conversation:
    """Messages in order ({"role", "content"}); `tools` holds a tool schema string when the record has one."""

    messages: list[dict[str, str]]
    tools: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def assistant_turns(self) -> int:
        """How many messages will be trained on."""
        return sum(m["role"] == "assistant" for m in self.messages)


def _text(rec: Record, key: str, value: Any, required: bool = True) -> str:
    if value is None:
        if required:
            raise DataError(f"{rec.where}: field '{key}' is missing")
        return ""
    if not isinstance(value, str):
        raise DataError(f"{rec.where}: field '{key}' must be a string, got {type(value).__name__}")
    return value


def parse_alpaca(rec: Record) -> Conversation:
    """Alpaca: instruction (+ input) -> output, optional system and history [[q, a], ...]."""
    d = rec.data
    if "instruction" not in d:
        raise DataError(f"{rec.where}: field 'instruction' is missing (Alpaca records need instruction and output)")
    if "output" not in d:
        raise DataError(f"{rec.where}: field 'output' is missing (Alpaca records need instruction and output)")
    msgs: list[dict[str, str]] = []
    system = _text(rec, "system", d.get("system"), required=False)
    if system:
        msgs.append({"role": "system", "content": system})
    history = d.get("history") or []
    if not isinstance(history, list):
        raise DataError(f"{rec.where}: field 'history' must be a list of [question, answer] pairs")
    for i, pair in enumerate(history):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise DataError(f"{rec.where}: history[{i}] must be a [question, answer] pair of strings")
        msgs += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    instruction = _text(rec, "instruction", d["instruction"])
    extra = _text(rec, "input", d.get("input"), required=False)
    prompt = f"{instruction}\n{extra}" if extra else instruction
    msgs += [{"role": "user", "content": prompt}, {"role": "assistant", "content": _text(rec, "output", d["output"])}]
    return Conversation(msgs)


SHAREGPT_ROLES = {
    "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system",
    "function_call": "assistant", "observation": "tool", "tool": "tool", "function": "tool",
}


def parse_sharegpt(rec: Record) -> Conversation:
    """ShareGPT: conversations [{from, value}] with human/gpt/system/function_call/observation roles."""
    conv = rec.data.get("conversations")
    if not isinstance(conv, list) or not conv:
        raise DataError(f"{rec.where}: field 'conversations' must be a non-empty list of {{from, value}} turns")
    msgs = []
    if isinstance(rec.data.get("system"), str) and rec.data["system"]:
        msgs.append({"role": "system", "content": rec.data["system"]})
    for i, turn in enumerate(conv):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise DataError(f"{rec.where}: conversations[{i}] must be an object with 'from' and 'value'")
        role = SHAREGPT_ROLES.get(turn["from"])
        if role is None:
            raise DataError(f"{rec.where}: conversations[{i}].from = {turn['from']!r} is not a known role; "
                            f"use one of {', '.join(SHAREGPT_ROLES)}")
        msgs.append({"role": role, "content": _text(rec, f"conversations[{i}].value", turn["value"])})
    tools = rec.data.get("tools")
    return Conversation(msgs, tools=tools if isinstance(tools, str) and tools else None)


def parse_messages(rec: Record) -> Conversation:
    """OpenAI messages: [{role, content}] with system/user/assistant/tool roles."""
    raw = rec.data.get("messages")
    if not isinstance(raw, list) or not raw:
        raise DataError(f"{rec.where}: field 'messages' must be a non-empty list of {{role, content}} objects")
    msgs = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or "role" not in m:
            raise DataError(f"{rec.where}: messages[{i}] must be an object with 'role' and 'content'")
        if m["role"] not in ROLES:
            raise DataError(f"{rec.where}: messages[{i}].role = {m['role']!r}; use one of {', '.join(ROLES)}")
        msgs.append({"role": m["role"], "content": _text(rec, f"messages[{i}].content", m.get("content"))})
    return Conversation(msgs)


FORMATS: dict[str, Callable[[Record], Conversation]] = {
    "alpaca": parse_alpaca,
    "sharegpt": parse_sharegpt,
    "messages": parse_messages,
}


def detect_format(rec: Record) -> str:
    """Name the format of a record from its keys, or raise DataError listing what each format needs."""
    keys = set(rec.data)
    if "messages" in keys:
        return "messages"
    if "conversations" in keys:
        return "sharegpt"
    if "instruction" in keys or {"output", "input"} & keys and "output" in keys:
        return "alpaca"
    raise DataError(
        f"{rec.where}: cannot tell the format from keys {sorted(keys)}; expected Alpaca (instruction/input/output), "
        "ShareGPT (conversations) or OpenAI messages (messages). Set data.format to say which"
    )


def validate_conversation(conv: Conversation, where: str) -> None:
    """A trainable conversation has at least one assistant turn, and ends with one."""
    if conv.assistant_turns() == 0:
        raise DataError(f"{where}: no assistant turn to learn from (roles: "
                        f"{', '.join(m['role'] for m in conv.messages)})")
    if conv.messages[-1]["role"] != "assistant":
        raise DataError(f"{where}: the last turn is '{conv.messages[-1]['role']}'; a training record must end "
                        "with the assistant's answer")


def parse_records(records: list[Record], fmt: str = "auto") -> tuple[list[Conversation], str]:
    """Parse records into conversations; returns (conversations, the format used)."""
    if not records:
        raise DataError("no records to parse (the file is empty)")
    if fmt == "auto":
        fmt = detect_format(records[0])
    if fmt not in FORMATS:
        raise DataError(f"data.format: unknown format {fmt!r}; choose from auto, {', '.join(FORMATS)}")
    parse = FORMATS[fmt]
    out = []
    for rec in records:
        conv = parse(rec)
        validate_conversation(conv, rec.where)
        conv.meta["where"] = rec.where
        out.append(conv)
    return out, fmt
