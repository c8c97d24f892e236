"""Record formats -> one internal Conversation type, with auto-detection and precise errors.

Each format is a pure function `parse(record) -> Conversation` in the FORMATS registry;
`detect_format` looks at a record's keys. A bad record raises DataError naming its file,
line (or index) and field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable

from tunelab.data.io import DataError, Record

ROLES = ("system", "user", "assistant", "tool")


@dataclass
class Conversation:
    """Messages in order ({"role", "content"}); `tools` holds the tool schemas as JSON text when the record has them.

    An assistant message that calls tools also has `tool_calls`: [{"name", "arguments"}], and its
    content is the call as JSON text (what templates without tool support render).
    """

    messages: list[dict[str, Any]]
    tools: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    images: list[Any] = field(default_factory=list)
    """The images of a `vision` record in order (tunelab.data.images.ImageRef); one `<image>` in the text each."""

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
    _no_images(rec, "sharegpt")
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
        msg = {"role": role, "content": _text(rec, f"conversations[{i}].value", turn["value"])}
        if turn["from"] == "function_call":
            msg["tool_calls"] = _calls_from_text(rec, f"conversations[{i}].value", msg["content"])
        msgs.append(msg)
    return Conversation(msgs, tools=_tools_text(rec, rec.data.get("tools")))


def parse_messages(rec: Record) -> Conversation:
    """OpenAI messages: [{role, content}] with system/user/assistant/tool roles."""
    _no_images(rec, "messages")
    raw = rec.data.get("messages")
    if not isinstance(raw, list) or not raw:
        raise DataError(f"{rec.where}: field 'messages' must be a non-empty list of {{role, content}} objects")
    msgs = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or "role" not in m:
            raise DataError(f"{rec.where}: messages[{i}] must be an object with 'role' and 'content'")
        if m["role"] not in ROLES:
            raise DataError(f"{rec.where}: messages[{i}].role = {m['role']!r}; use one of {', '.join(ROLES)}")
        if m["role"] == "assistant" and m.get("tool_calls"):
            calls = _openai_calls(rec, i, m["tool_calls"])
            content = m.get("content") or json.dumps(calls[0] if len(calls) == 1 else calls, ensure_ascii=False)
            msgs.append({"role": "assistant", "content": _text(rec, f"messages[{i}].content", content),
                         "tool_calls": calls})
            continue
        msgs.append({"role": m["role"], "content": _text(rec, f"messages[{i}].content", m.get("content"))})
    return Conversation(msgs, tools=_tools_text(rec, rec.data.get("tools")))


def _no_images(rec: Record, fmt: str) -> None:
    """A record with images read as a text format would silently train without them: refuse it."""
    if rec.data.get("images"):
        raise DataError(f"{rec.where}: this record has images, which data.format={fmt} ignores; set data.format "
                        "to vision (or auto)")


def _calls_from_text(rec: Record, key: str, text: str) -> list[dict]:
    """ShareGPT function_call text -> [{name, arguments}]; a JSON object or a list of them."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        raise DataError(f"{rec.where}: {key} is a function_call but not JSON; write it as "
                        '{"name": ..., "arguments": {...}}') from None
    calls = obj if isinstance(obj, list) else [obj]
    for c in calls:
        if not (isinstance(c, dict) and isinstance(c.get("name"), str)):
            raise DataError(f"{rec.where}: {key} must be {{\"name\": ..., \"arguments\": {{...}}}} (or a list of them)")
    return [{"name": c["name"], "arguments": c.get("arguments", {})} for c in calls]


def _openai_calls(rec: Record, i: int, raw: Any) -> list[dict]:
    """OpenAI tool_calls [{type, function: {name, arguments (JSON text)}}] -> [{name, arguments}]."""
    if not isinstance(raw, list):
        raise DataError(f"{rec.where}: messages[{i}].tool_calls must be a list")
    calls = []
    for j, c in enumerate(raw):
        fn = c.get("function") if isinstance(c, dict) else None
        if not (isinstance(fn, dict) and isinstance(fn.get("name"), str)):
            raise DataError(f"{rec.where}: messages[{i}].tool_calls[{j}] needs function.name and function.arguments")
        args = fn.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError:
                raise DataError(f"{rec.where}: messages[{i}].tool_calls[{j}].function.arguments is not JSON") from None
        calls.append({"name": fn["name"], "arguments": args})
    return calls


def _tools_text(rec: Record, tools: Any) -> str | None:
    """Tool schemas as JSON text (files hold a JSON string or a list); a string that is not JSON is an error,
    not silently dropped (the template would train without the tools the answers call)."""
    if tools is None or tools == [] or (isinstance(tools, str) and tools.strip() in ("", "[]", "{}")):
        return None
    if isinstance(tools, str):
        try:
            parsed = json.loads(tools)
        except json.JSONDecodeError as e:
            raise DataError(f"{rec.where}: field 'tools' is a string but not JSON ({e.msg} at column {e.colno}); "
                            'write the tool schemas as a JSON list, e.g. [{"name": "get_weather", '
                            '"parameters": {...}}]') from None
        except RecursionError:
            raise DataError(f"{rec.where}: field 'tools' is nested too deeply to read") from None
        if not isinstance(parsed, (list, dict)):
            raise DataError(f"{rec.where}: field 'tools' must hold a JSON list of tool schemas, got "
                            f"{type(parsed).__name__}")
        return tools
    if isinstance(tools, list):
        return json.dumps(tools, ensure_ascii=False)
    raise DataError(f"{rec.where}: field 'tools' must be a JSON string or a list of tool schemas")


def _parse_vision(rec: Record) -> Conversation:
    from tunelab.data.images import parse_vision

    return parse_vision(rec)


FORMATS: dict[str, Callable[[Record], Conversation]] = {
    "alpaca": parse_alpaca,
    "sharegpt": parse_sharegpt,
    "messages": parse_messages,
    "vision": _parse_vision,
}


def detect_format(rec: Record) -> str:
    """Name the format of a record from its keys, or raise DataError listing what each format needs."""
    from tunelab.data.images import has_images

    keys = set(rec.data)
    if has_images(rec):
        return "vision"
    if "messages" in keys:
        return "messages"
    if "conversations" in keys:
        return "sharegpt"
    if "instruction" in keys or {"output", "input"} & keys and "output" in keys:
        return "alpaca"
    raise DataError(
        f"{rec.where}: cannot tell the format from keys {sorted(keys)}; expected Alpaca (instruction/input/output), "
        "ShareGPT (conversations), OpenAI messages (messages), or either with images (images / image_url parts). "
        "Set data.format to say which"
    )


def validate_conversation(conv: Conversation, where: str) -> None:
    """A trainable conversation has at least one assistant turn, and ends with one."""
    if conv.assistant_turns() == 0:
        raise DataError(f"{where}: no assistant turn to learn from (roles: "
                        f"{', '.join(m['role'] for m in conv.messages)})")
    if conv.messages[-1]["role"] != "assistant":
        raise DataError(f"{where}: the last turn is '{conv.messages[-1]['role']}'; a training record must end "
                        "with the assistant's answer")


def empty_answer(conv: Conversation) -> str | None:
    """Why a conversation has an empty assistant answer (blank content and no tool call), or None."""
    turns = [m for m in conv.messages if m["role"] == "assistant"]
    for k, m in enumerate(turns, 1):
        if not m.get("tool_calls") and not str(m.get("content") or "").strip():
            which = "the assistant answer" if len(turns) == 1 else f"assistant turn {k} of {len(turns)}"
            return (f"{which} is empty; training on it teaches the model to answer with nothing: fill it in or "
                    "remove the record")
    return None


def parse_records(records: list[Record], fmt: str = "auto", rejects: list[dict] | None = None,
                  empty: list[dict] | None = None) -> tuple[list[Conversation], str]:
    """Parse records into conversations; returns (conversations, the format used).

    With `rejects` (a list), a bad record is appended there as {where, error, record} and skipped
    instead of stopping everything; otherwise the first bad record raises DataError. With `empty`
    (a list), records with an empty assistant answer are appended there the same way and left out.
    """
    if not records:
        raise DataError("no records to parse (the file is empty)")
    if fmt == "auto":
        fmt = _detect_first(records, lenient=rejects is not None)
    if fmt not in FORMATS:
        raise DataError(f"data.format: unknown format {fmt!r}; choose from auto, {', '.join(FORMATS)}")
    parse = FORMATS[fmt]
    out = []
    for rec in records:
        try:
            conv = parse(rec)
            validate_conversation(conv, rec.where)
        except DataError as e:
            if rejects is None:
                raise
            rejects.append({"where": rec.where, "error": str(e), "record": rec.data})
            continue
        if empty is not None and (why := empty_answer(conv)):
            empty.append({"where": rec.where, "error": f"{rec.where}: {why}", "reason": "empty_answer",
                          "record": rec.data})
            continue
        conv.meta["where"] = rec.where
        out.append(conv)
    return out, fmt


def _detect_first(records: list[Record], lenient: bool) -> str:
    """The format of the first record (or, when lenient, of the first record whose format can be told);
    `vision` when any record has images, so a file whose first records are text-only still keeps its images."""
    from tunelab.data.images import has_images

    if any(has_images(r) for r in records):
        return "vision"
    if not lenient:
        return detect_format(records[0])
    for rec in records:
        try:
            return detect_format(rec)
        except DataError:
            continue
    return detect_format(records[0])
