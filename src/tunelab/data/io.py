"""Read and write record files (JSON array, JSONL) keeping each record's file and line for error messages."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from tunelab.utils.io import atomic_write_jsonl, atomic_write_text
from tunelab.utils.userfiles import check_value, loads_json, may_hold_surrogates, read_text


class DataError(ValueError):
    """Bad input data; the message names the file, the line or index, the field, and the fix."""


@dataclass(frozen=True)
class Record:
    """One raw record and where it came from (`where` reads like 'data.jsonl:12' or 'data.json[3]').

    `source` is the file it was read from, when there is one: image paths in a record are relative to it.
    """

    data: dict[str, Any]
    where: str
    source: str | None = None


def read_records(path: str | Path) -> list[Record]:
    """Load every record of a .json (array of objects) or .jsonl file, with its position.

    The file must be UTF-8 (a BOM is allowed); bytes in another encoding, nesting past
    `tunelab.utils.userfiles.MAX_DEPTH` and lone surrogate escapes ("\\ud800") are DataErrors naming
    the file and line (or index).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such data file")
    text = read_text(path, DataError)
    if path.suffix == ".jsonl" or (path.suffix != ".json" and not text.lstrip().startswith("[")):
        records = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            records.append(Record(parse_json_line(line, path, lineno), f"{path}:{lineno}", str(path)))
        return records
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:
        raise DataError(f"{path}: nested too deeply to read (thousands of [ or {{ levels); flatten the "
                        "structure") from None
    if isinstance(obj, dict):
        obj = [obj]
    if not isinstance(obj, list):
        raise DataError(f"{path}: expected a JSON array of records, got {type(obj).__name__}")
    out = []
    surrogates = may_hold_surrogates(text)
    for i, item in enumerate(obj):
        if not isinstance(item, dict):
            raise DataError(f"{path}[{i}]: expected a JSON object, got {type(item).__name__}")
        check_value(item, f"{path}[{i}]", DataError, surrogates)
        out.append(Record(item, f"{path}[{i}]", str(path)))
    return out


def parse_json_line(line: str, path: str | Path, lineno: int, hint: str = "") -> dict:
    """One line of a JSONL file as a checked JSON object (DataError naming file:line otherwise)."""
    where = f"{path}:{lineno}"
    try:
        obj = loads_json(line, where, DataError)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: not valid JSON ({e.msg} at column {e.colno}); each line of a .jsonl file must "
                        f"be one JSON object{hint}") from None
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    return obj


def write_records(path: str | Path, records: Iterable[dict]) -> Path:
    """Write records atomically: JSONL for .jsonl, else a JSON array."""
    path = Path(path)
    rows = list(records)
    if path.suffix == ".jsonl":
        return atomic_write_jsonl(path, rows)
    return atomic_write_text(path, json.dumps(rows, ensure_ascii=False, indent=2) + "\n")
