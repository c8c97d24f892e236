"""More places records come from: CSV, TSV, Parquet and `datasets.save_to_disk` folders, plus column mapping.

Every reader returns `Record`s with a position (`file:line` for text files, `file[row]` for
columnar ones), so a bad record is reported where it is. Readers are a registry keyed by
file suffix; JSON/JSONL stay with `tunelab.data.io.read_records`.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path

from tunelab.data.io import DataError, Record, read_records
from tunelab.utils.userfiles import loads_json, read_text

# Columns that hold lists; in a CSV/TSV cell they are written as JSON text.
JSON_COLUMNS = ("conversations", "messages", "history")


def _cell(key: str, value, where: str = "?"):
    if key in JSON_COLUMNS and isinstance(value, str) and value.lstrip().startswith("["):
        try:
            return loads_json(value, f"{where}: column {key!r}", DataError)
        except json.JSONDecodeError:
            return value
    return value


def _read_delimited(path: Path, delimiter: str) -> list[Record]:
    out = []
    text = read_text(path, DataError)  # strict UTF-8: a Latin-1 byte is reported with its line
    with io.StringIO(text, newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        if not reader.fieldnames:
            raise DataError(f"{path}: no header row; the first line must name the columns")
        start = reader.line_num + 1  # a quoted cell may span lines: report where the row starts
        for row in reader:
            if None in row:
                raise DataError(f"{path}:{start}: more cells than header columns "
                                f"({len(reader.fieldnames)}); quote cells that contain '{delimiter}'")
            where = f"{path}:{start}"
            out.append(Record({k: _cell(k, v, where) for k, v in row.items()}, where))
            start = reader.line_num + 1
    return out


def read_csv(path: Path) -> list[Record]:
    """Comma-separated file with a header row; list columns (conversations, messages, history) as JSON text."""
    return _read_delimited(path, ",")


def read_tsv(path: Path) -> list[Record]:
    """Tab-separated file with a header row."""
    return _read_delimited(path, "\t")


def read_parquet(path: Path) -> list[Record]:
    """Parquet file (via pyarrow); row i is reported as file[i]."""
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise DataError(f"{path}: reading Parquet needs pyarrow: pip install 'tunelab[data]'") from e
    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as e:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, UnicodeDecodeError...
        raise DataError(f"{path}: not a readable Parquet file ({_first_line(e)}); write it again with pandas' "
                        "to_parquet or pyarrow, or use JSONL") from None
    return [Record(r, f"{path}[{i}]") for i, r in enumerate(rows)]


def read_saved_dataset(path: Path) -> list[Record]:
    """A folder written by `datasets.Dataset.save_to_disk` (Arrow files); a DatasetDict uses its 'train' split."""
    try:
        import datasets
    except ImportError as e:
        raise DataError(f"{path}: reading a saved dataset folder needs datasets: pip install 'tunelab[data]'") from e
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # noqa: BLE001 - broken Arrow files or metadata raise many kinds of errors
        raise DataError(f"{path}: not a readable save_to_disk folder ({_first_line(e)}); save the dataset again "
                        "with Dataset.save_to_disk") from None
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise DataError(f"{path}: saved DatasetDict has splits {sorted(ds)}; point data.train at one split "
                            f"folder, e.g. {path}/{min(ds)}")
        ds = ds["train"]
    return [Record(dict(r), f"{path}[{i}]") for i, r in enumerate(ds)]


def _first_line(e: BaseException) -> str:
    """An exception's message cut to its first line (pyarrow's can run to many)."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


READERS: dict[str, Callable[[Path], list[Record]]] = {
    ".json": read_records,
    ".jsonl": read_records,
    ".csv": read_csv,
    ".tsv": read_tsv,
    ".parquet": read_parquet,
}


def read_any(path: str | Path) -> list[Record]:
    """Records from any supported file or a save_to_disk folder, chosen by suffix."""
    path = Path(path)
    if path.is_dir():
        if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
            return read_saved_dataset(path)
        raise DataError(f"{path}: a folder, but not one written by datasets' save_to_disk "
                        "(no dataset_info.json or dataset_dict.json)")
    if not path.is_file():
        raise DataError(f"{path}: no such data file")
    reader = READERS.get(path.suffix.lower(), read_records)
    return reader(path)


def map_columns(records: list[Record], columns: dict[str, str] | None) -> list[Record]:
    """Rename user columns to standard names: `columns` maps standard name -> the file's column.

    Example: {"instruction": "question", "output": "answer"}. A record missing a mapped column
    is an error naming the record and the columns it has.
    """
    if not columns:
        return records
    out = []
    for rec in records:
        data = dict(rec.data)
        for standard, theirs in columns.items():
            if theirs not in data:
                raise DataError(f"{rec.where}: data.columns maps {standard!r} to column {theirs!r}, which this "
                                f"record lacks (it has {sorted(rec.data)})")
            data[standard] = _cell(standard, data.pop(theirs), rec.where)
        out.append(Record(data, rec.where, rec.source))
    return out
