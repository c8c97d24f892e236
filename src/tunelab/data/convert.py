"""Convert SFT data between Alpaca, ShareGPT and OpenAI messages (JSONL out).

Each target is a pure function `emit(conversation, where) -> dict` in the EMITTERS registry;
reading goes through the same parsers as training, so a converted file trains exactly like
the original (tested by round trip).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tunelab.data.formats import Conversation
from tunelab.data.io import DataError
from tunelab.utils.io import atomic_write_jsonl

SHAREGPT_FROM = {"user": "human", "assistant": "gpt", "tool": "observation", "system": "system"}


def to_messages(conv: Conversation, where: str) -> dict:
    """OpenAI messages; tool calls as `tool_calls` with JSON-text arguments, schemas as a `tools` list."""
    msgs = []
    for m in conv.messages:
        if m.get("tool_calls"):
            calls = [{"type": "function", "function": {"name": c["name"],
                                                      "arguments": json.dumps(c["arguments"], ensure_ascii=False)}}
                     for c in m["tool_calls"]]
            msgs.append({"role": "assistant", "content": None, "tool_calls": calls})
        else:
            msgs.append({"role": m["role"], "content": m["content"]})
    out: dict = {"messages": msgs}
    if conv.tools:
        out["tools"] = json.loads(conv.tools)
    return out


def to_sharegpt(conv: Conversation, where: str) -> dict:
    """ShareGPT conversations; a leading system turn becomes the `system` field, tool calls `function_call`."""
    msgs = conv.messages
    out: dict = {}
    if msgs and msgs[0]["role"] == "system":
        out["system"] = msgs[0]["content"]
        msgs = msgs[1:]
    turns = []
    for m in msgs:
        if m.get("tool_calls"):
            calls = m["tool_calls"]
            turns.append({"from": "function_call",
                          "value": json.dumps(calls[0] if len(calls) == 1 else calls, ensure_ascii=False)})
        else:
            turns.append({"from": SHAREGPT_FROM[m["role"]], "value": m["content"]})
    out["conversations"] = turns
    if conv.tools:
        out["tools"] = conv.tools
    return out


def to_alpaca(conv: Conversation, where: str) -> dict:
    """Alpaca: optional system, earlier user/assistant pairs as history, the last pair as instruction/output."""
    msgs = conv.messages
    out: dict = {}
    if msgs and msgs[0]["role"] == "system":
        out["system"] = msgs[0]["content"]
        msgs = msgs[1:]
    roles = [m["role"] for m in msgs]
    if conv.tools or len(msgs) % 2 or roles != ["user", "assistant"] * (len(msgs) // 2):
        raise DataError(f"{where}: cannot be written as Alpaca (turns: {', '.join(roles)}); Alpaca holds only "
                        "alternating user/assistant turns without tools. Convert to sharegpt or messages instead")
    pairs = [[msgs[i]["content"], msgs[i + 1]["content"]] for i in range(0, len(msgs), 2)]
    out.update({"instruction": pairs[-1][0], "input": "", "output": pairs[-1][1]})
    if len(pairs) > 1:
        out["history"] = pairs[:-1]
    return out


EMITTERS: dict[str, Callable[[Conversation, str], dict]] = {
    "alpaca": to_alpaca,
    "sharegpt": to_sharegpt,
    "messages": to_messages,
}


def convert(src: str | Path, dst: str | Path, to: str, fmt: str = "auto",
            columns: dict[str, str] | None = None) -> tuple[int, str]:
    """Convert `src` (any supported file) to JSONL `dst` in format `to`; returns (records written, source format)."""
    from tunelab.data.pipeline import load_conversations

    if to not in EMITTERS:
        raise DataError(f"--to {to!r}: choose one of {', '.join(EMITTERS)}")
    convs, found = load_conversations(str(src), fmt, columns)
    rows = [EMITTERS[to](c, c.meta.get("where", str(src))) for c in convs]
    atomic_write_jsonl(dst, rows)
    return len(rows), found
