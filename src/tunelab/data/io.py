"""Read and write record files (JSON array, JSONL) keeping each record's file and line for error messages."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from tunelab.utils.io import atomic_write_jsonl, atomic_write_text


class DataError(ValueError):
    """Bad input data; the message names the file, the line or index, the field, and the fix."""


@dataclass(frozen=True)
class Record:
    """One raw record and where it came from (`where` reads like 'data.jsonl:12' or 'data.json[3]')."""

    data: dict[str, Any]
    where: str


def read_records(path: str | Path) -> list[Record]:
    """Load every record of a .json (array of objects) or .jsonl file, with its position."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such data file")
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix == ".jsonl" or (path.suffix != ".json" and not text.lstrip().startswith("[")):
        records = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno}); "
                                "each line of a .jsonl file must be one JSON object") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            records.append(Record(obj, f"{path}:{lineno}"))
        return records
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
    if isinstance(obj, dict):
        obj = [obj]
    if not isinstance(obj, list):
        raise DataError(f"{path}: expected a JSON array of records, got {type(obj).__name__}")
    out = []
    for i, item in enumerate(obj):
        if not isinstance(item, dict):
            raise DataError(f"{path}[{i}]: expected a JSON object, got {type(item).__name__}")
        out.append(Record(item, f"{path}[{i}]"))
    return out


def write_records(path: str | Path, records: Iterable[dict]) -> Path:
    """Write records atomically: JSONL for .jsonl, else a JSON array."""
    path = Path(path)
    rows = list(records)
    if path.suffix == ".jsonl":
        return atomic_write_jsonl(path, rows)
    return atomic_write_text(path, json.dumps(rows, ensure_ascii=False, indent=2) + "\n")
