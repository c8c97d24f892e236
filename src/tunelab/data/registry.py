"""LLaMA-Factory dataset registries: ``data.train: path/to/dataset_info.json#dataset_name``.

LLaMA-Factory names its datasets in a ``dataset_info.json`` whose entries give ``file_name`` (relative to the
registry), ``formatting`` (``alpaca``, the default, or ``sharegpt``), ``columns`` (which column holds what),
``tags`` (sharegpt's role and content keys and role names) and ``ranking`` (preference pairs). An entry is
read into the records tunelab's own formats parse, so every stage takes it:

    alpaca             {"instruction", "input", "output", "system", "history"}   (sft)
                       {"text"}                                                  (pretrain: only a prompt column)
    alpaca + ranking   {"prompt", "chosen", "rejected"}                          (dpo, orpo, simpo, reward)
    sharegpt           {"conversations": [{"from", "value"}], "system", "tools"}
    sharegpt + ranking {"prompt": [messages], "chosen", "rejected"}
    sharegpt + kto_tag {"messages": [...], "label"}                              (kto)

Entries that point at the hub (``hf_hub_url``, ``ms_hub_url``...) or at a script are refused with the fix (tunelab
never downloads), as are multimodal columns (images, videos, audios).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from tunelab.data.io import DataError, Record

SEPARATOR = "#"
ALPACA_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output", "history": None, "system": None,
                  "chosen": "chosen", "rejected": "rejected", "kto_tag": None}
SHAREGPT_COLUMNS = {"messages": "conversations", "system": None, "tools": None, "chosen": "chosen",
                    "rejected": "rejected", "kto_tag": None}
SHAREGPT_TAGS = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
                 "observation_tag": "observation", "function_tag": "function_call", "system_tag": "system"}
MEDIA = ("images", "videos", "audios")


def is_registry_ref(path: str | Path) -> bool:
    """Whether a data path names a registry entry (``file.json#name``) rather than a file."""
    text = str(path)
    head, sep, name = text.rpartition(SEPARATOR)
    return bool(sep and name and head.endswith(".json") and not Path(text).exists())


def registry_entry(ref: str | Path) -> tuple[Path, dict]:
    """(the entry's data file, the entry) for ``registry.json#name``; DataError naming registry and entry."""
    head, _, name = str(ref).rpartition(SEPARATOR)
    registry = Path(head)
    if not registry.is_file():
        raise DataError(f"{registry}: no such dataset registry (data path {ref})")
    try:
        entries = json.loads(registry.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{registry}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(entries, dict):
        raise DataError(f"{registry}: a dataset registry is a JSON object of {{name: entry}}")
    if name not in entries:
        near = sorted(entries, key=lambda k: _distance(k, name))[:3]
        raise DataError(f"{registry}: no dataset {name!r}; did you mean {', '.join(near)}?")
    entry = entries[name]
    where = f"{registry}#{name}"
    remote = [k for k in ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name") if k in entry]
    if "file_name" not in entry:
        raise DataError(f"{where}: the entry names no file_name ({', '.join(remote) or 'nothing'} instead); tunelab "
                        "never downloads: fetch the data once, save it next to the registry and set file_name")
    media = [c for c in MEDIA if c in (entry.get("columns") or {})]
    if media:
        raise DataError(f"{where}: multimodal columns ({', '.join(media)}) are not supported; train on the text "
                        "columns only by removing them from the entry")
    data_file = registry.parent / entry["file_name"]
    if not data_file.resolve().is_relative_to(registry.parent.resolve()):  # the registry vouches for its folder only
        raise DataError(f"{where}: file_name {entry['file_name']!r} leads outside the registry's folder "
                        f"({registry.parent}); put the data file in that folder (or below it) and name it from there")
    if not data_file.exists():
        raise DataError(f"{where}: file_name {entry['file_name']!r} not found (looked for {data_file}; it is "
                        "relative to the registry's folder)")
    return data_file, entry


def _distance(a: str, b: str) -> int:
    import difflib

    return -int(100 * difflib.SequenceMatcher(None, a, b).ratio())


def read_registry(ref: str | Path, read_file: Callable[[Path], list[Record]]) -> list[Record]:
    """The records of a registry entry, converted to tunelab's formats (see the module docstring).

    `read_file` reads the entry's data file (JSON, JSONL, CSV, Parquet...): `tunelab.data.sources.read_any`,
    which is also what calls this for a `registry.json#name` path.
    """
    data_file, entry = registry_entry(ref)
    raw = _read_file(data_file, read_file)
    formatting = entry.get("formatting", "alpaca")
    if formatting not in ("alpaca", "sharegpt"):
        raise DataError(f"{ref}: formatting {formatting!r} is not supported; use alpaca or sharegpt")
    columns = {**(ALPACA_COLUMNS if formatting == "alpaca" else SHAREGPT_COLUMNS), **(entry.get("columns") or {})}
    convert = _alpaca if formatting == "alpaca" else _sharegpt
    tags = {**SHAREGPT_TAGS, **(entry.get("tags") or {})}
    ranking = bool(entry.get("ranking"))
    return [Record(convert(rec, columns, tags, ranking), rec.where) for rec in raw]


def _read_file(path: Path, read_file: Callable[[Path], list[Record]]) -> list[Record]:
    if path.suffix == ".txt":  # LLaMA-Factory reads a text file as one "text" record per line
        from tunelab.utils.userfiles import read_text

        lines = read_text(path, DataError).splitlines()
        return [Record({"text": line}, f"{path}:{i}") for i, line in enumerate(lines, 1) if line.strip()]
    return read_file(path)


def _get(rec: Record, columns: dict, key: str, default: Any = None) -> Any:
    column = columns.get(key)
    return rec.data.get(column, default) if column else default


def _alpaca(rec: Record, columns: dict, tags: dict, ranking: bool) -> dict:
    prompt, query = _get(rec, columns, "prompt", ""), _get(rec, columns, "query", "")
    response_col = columns.get("response")
    if response_col not in rec.data and not ranking and columns.get("kto_tag") is None:  # pretraining text
        return {"text": prompt}
    text = f"{prompt}\n{query}" if query else prompt
    system, history = _get(rec, columns, "system"), _get(rec, columns, "history")
    if ranking:
        msgs = ([{"role": "system", "content": system}] if system else []) + \
            [m for q, a in (history or []) for m in ({"role": "user", "content": q},
                                                     {"role": "assistant", "content": a})] + \
            [{"role": "user", "content": text}]
        return {"prompt": msgs, "chosen": _get(rec, columns, "chosen"), "rejected": _get(rec, columns, "rejected")}
    out = {"instruction": text, "output": rec.data.get(response_col, "")}
    if isinstance(out["output"], list):  # a KTO/ranking-shaped response list: the first answer
        out["output"] = out["output"][0] if out["output"] else ""
    if system:
        out["system"] = system
    if history:
        out["history"] = history
    if columns.get("kto_tag"):
        return {"prompt": text, "completion": out["output"], "label": bool(_get(rec, columns, "kto_tag"))}
    return out


def _role(turn: Any, tags: dict, where: str, i: int) -> str:
    roles = {tags["user_tag"]: "user", tags["assistant_tag"]: "assistant", tags["observation_tag"]: "tool",
             tags["function_tag"]: "function_call", tags["system_tag"]: "system"}
    if not isinstance(turn, dict) or tags["role_tag"] not in turn or tags["content_tag"] not in turn:
        raise DataError(f"{where}: turn {i} must be an object with {tags['role_tag']!r} and {tags['content_tag']!r} "
                        "(the entry's tags.role_tag / tags.content_tag)")
    role = roles.get(turn[tags["role_tag"]])
    if role is None:
        raise DataError(f"{where}: turn {i} has role {turn[tags['role_tag']]!r}, not one of the entry's tags "
                        f"({', '.join(roles)})")
    return role


def _sharegpt(rec: Record, columns: dict, tags: dict, ranking: bool) -> dict:
    turns = _get(rec, columns, "messages") or []
    if not isinstance(turns, list):
        raise DataError(f"{rec.where}: column {columns['messages']!r} must be a list of turns")
    roles = [_role(t, tags, rec.where, i) for i, t in enumerate(turns)]
    system, tools = _get(rec, columns, "system"), _get(rec, columns, "tools")
    std = {"user": "human", "assistant": "gpt", "tool": "observation", "function_call": "function_call",
           "system": "system"}
    if ranking or columns.get("kto_tag"):
        msgs = ([{"role": "system", "content": system}] if system else []) + \
            [{"role": "assistant" if r == "function_call" else r, "content": t[tags["content_tag"]]}
             for r, t in zip(roles, turns)]
        if columns.get("kto_tag") and not ranking:
            return {"messages": msgs, "label": bool(_get(rec, columns, "kto_tag"))}
        answer = lambda key: (_get(rec, columns, key) or {}).get(tags["content_tag"])  # noqa: E731
        return {"prompt": msgs, "chosen": answer("chosen"), "rejected": answer("rejected")}
    out: dict = {"conversations": [{"from": std[r], "value": t[tags["content_tag"]]} for r, t in zip(roles, turns)]}
    if system:
        out["system"] = system
    if tools:
        out["tools"] = tools
    return out
