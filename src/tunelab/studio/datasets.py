"""The dataset library: uploads streamed to disk, checked, inspected and prepared with tunelab.data.

Uploads are only ever read as data (JSON, JSONL, CSV, Parquet through tunelab's readers),
never executed; their names are sanitized and never overwrite another file.

A library file can carry a column mapping (`data.columns`: standard name -> the file's column),
kept beside it in `datasets/.columns/<name>.json`; inspect applies it, and the New-job form
fills `data.columns` with it when that file is chosen.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO

from tunelab.data.io import DataError
from tunelab.studio.paths import (
    DATA_SUFFIXES,
    NotFound,
    Settings,
    StudioError,
    inside,
    safe_name,
    short_repr,
    unique_path,
)

CHUNK = 1 << 20
PARQUET_MAGIC = b"PAR1"
# Names data.columns can map to: the fields of the record formats (tunelab.data.formats) and of the
# preference / KTO / text / classification stages.
STANDARD_FIELDS = ("instruction", "input", "output", "system", "history", "conversations", "messages", "tools",
                   "prompt", "chosen", "rejected", "completion", "label", "text")


class TooLarge(StudioError):
    """An upload over the size limit (HTTP 413)."""


def _check_content(path: Path, head: bytes, original: str) -> None:
    """Refuse a .parquet upload that does not start like one. Text files are checked whole (strict UTF-8, binary
    content, nesting, surrogates) when `read_dataset` reads them, not just their first bytes."""
    if path.suffix.lower() == ".parquet" and not head.startswith(PARQUET_MAGIC):
        raise StudioError(f"{original}: not a Parquet file (it does not start with PAR1)")


def too_large(settings: Settings, filename: str) -> TooLarge:
    return TooLarge(f"{filename}: larger than the upload limit of {settings.max_upload_mb:g} MB; start the studio "
                    "with a larger --max-upload-mb or prepare the file with `tunelab data` first")


class Spool:
    """A temporary file in datasets/ that an upload is written into, counting bytes against the limit.

    Nothing enters the library until `admit` checked the whole file; `close` removes what is left.
    """

    def __init__(self, settings: Settings, filename: str):
        self.settings, self.filename = settings, filename
        self.name = safe_name(filename, (*DATA_SUFFIXES, ".zip"))  # .zip: records + images (studio.image_zip)
        fd, tmp = tempfile.mkstemp(dir=settings.datasets, prefix=".upload-", suffix=Path(self.name).suffix)
        self.path, self.out = Path(tmp), os.fdopen(fd, "wb")
        self.size, self.head = 0, b""

    def write(self, chunk: bytes) -> None:
        """Append a piece; TooLarge as soon as the file passes the limit (nothing more is written)."""
        self.size += len(chunk)
        if self.size > self.settings.max_upload_bytes:
            raise too_large(self.settings, self.filename)
        if len(self.head) < 65536:
            self.head += chunk[:65536 - len(self.head)]
        self.out.write(chunk)

    def admit(self) -> Path:
        """Check the complete file (not empty, the type it claims, parses with tunelab's readers) and link it
        into the library under an unused name."""
        self.out.close()
        try:
            if self.size == 0:
                raise StudioError(f"{self.filename}: the file is empty")
            if Path(self.name).suffix.lower() == ".zip":
                from tunelab.studio.image_zip import admit_zip

                return admit_zip(self.settings, self.path, self.filename)
            _check_content(Path(self.name), self.head, self.filename)
            if not read_dataset(self.path, self.filename):
                raise StudioError(f"{self.filename}: no records in the file")
            dst = unique_path(self.settings.datasets, self.name)
            os.link(self.path, dst)  # fails instead of overwriting if the name was taken meanwhile
            return dst
        except DataError as e:
            raise StudioError(str(e).replace(str(self.path), self.filename)) from None

    def close(self) -> None:
        self.out.close()
        self.path.unlink(missing_ok=True)


def save_upload(settings: Settings, filename: str, stream: BinaryIO) -> Path:
    """Stream an upload into datasets/ under a sanitized, unused name; refuse oversize or malformed files.

    The file is written to a temporary name first and only linked into the library once it
    is complete and parses, so a failed upload leaves nothing behind.
    """
    spool = Spool(settings, filename)
    try:
        while chunk := stream.read(CHUNK):
            spool.write(chunk)
        return spool.admit()
    finally:
        spool.close()


def read_dataset(path: Path, name: str | None = None):
    """Records of a data file through tunelab's readers (JSON, JSONL, CSV, Parquet); the whole file is read, so
    a bad byte or record anywhere is a StudioError (HTTP 400) naming the file as the user knows it (`name`)."""
    from tunelab.data.sources import read_any

    try:
        return read_any(path)
    except DataError as e:
        # the server's path stays private: "<library>/.upload-x.jsonl:3" reads "data.jsonl:3" (also in fix hints)
        raise StudioError(str(e).replace(str(path.with_suffix("")), str(Path(name or path.name).with_suffix(""))))\
            from None


def dataset_path(settings: Settings, name: str) -> Path:
    """The library file called `name` (refusing anything outside datasets/)."""
    p = inside(settings.datasets / name, [settings.datasets], "dataset", short_repr(name))
    if p.parent != settings.datasets or not p.is_file() or p.name.startswith("."):
        raise NotFound(f"no dataset {name!r} in the library")
    return p


def list_datasets(settings: Settings) -> list[dict]:
    """Every file in the library: name, size, modified time and the path a config uses."""
    out = []
    for p in sorted(settings.datasets.iterdir()):
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in DATA_SUFFIXES:
            st = p.stat()
            out.append({"name": p.name, "bytes": st.st_size, "modified": st.st_mtime,
                        "path": str(p.relative_to(settings.data_dir)), "columns": saved_columns(settings, p.name)})
    return out


def _columns_file(settings: Settings, name: str) -> Path:
    return settings.datasets / ".columns" / f"{dataset_path(settings, name).name}.json"


def saved_columns(settings: Settings, name: str) -> dict[str, str] | None:
    """The column mapping saved with a library file, or None."""
    p = _columns_file(settings, name)
    if not p.is_file():
        return None
    try:
        value = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) and value else None


def check_columns(columns: dict, names: list[str], name: str) -> dict[str, str]:
    """A mapping {standard field: the file's column} that names real columns; one error listing every problem."""
    problems = []
    for standard, theirs in columns.items():
        if standard not in STANDARD_FIELDS:
            problems.append(f"{standard!r} is not a standard field (choose from {', '.join(STANDARD_FIELDS)})")
        if not isinstance(theirs, str) or theirs not in names:
            problems.append(f"{standard!r} -> {theirs!r}: {name} has no such column (it has {', '.join(names)})")
    taken = [t for t in set(columns.values()) if list(columns.values()).count(t) > 1]
    if taken:
        problems.append(f"column(s) {', '.join(map(repr, sorted(map(str, taken))))} mapped to more than one field")
    if problems:
        raise StudioError(f"data.columns for {name}: " + "; ".join(problems))
    return dict(columns)


def file_columns(records) -> list[str]:
    """Column names of a file's records, in first-seen order (the first 1,000 records)."""
    seen: dict[str, None] = {}
    for r in records[:1000]:
        if isinstance(r.data, dict):
            seen.update(dict.fromkeys(r.data))
    return list(seen)


def save_columns(settings: Settings, name: str, columns: dict | None) -> dict[str, str] | None:
    """Save (or, with an empty mapping, remove) a library file's column mapping after checking it."""
    from tunelab.utils.io import atomic_write_json

    path = dataset_path(settings, name)
    target = _columns_file(settings, name)
    if not columns:
        target.unlink(missing_ok=True)
        return None
    columns = check_columns(columns, file_columns(read_dataset(path, name)), name)
    atomic_write_json(target, columns)
    return columns


def inspect(settings: Settings, name: str, model: str = "tiny-llama", max_length: int = 1024,
            columns: dict[str, str] | None = None) -> dict:
    """Detected format, counts, token-length histogram and an example with trained spans marked.

    `columns` (standard field -> the file's column) is applied first; None uses the saved mapping,
    an empty dict none at all.
    """
    from tunelab.data.inspect import inspect_data
    from tunelab.models import load_tokenizer

    path = dataset_path(settings, name)
    names = file_columns(read_dataset(path, name))
    mapping = saved_columns(settings, name) if columns is None else (check_columns(columns, names, name)
                                                                     if columns else None)
    from tunelab.models.loader import vision_source
    from tunelab.models.vision import load_processor

    vision_dir = vision_source(model) if model else None
    proc = load_processor(vision_dir) if vision_dir is not None else None  # images measured as the model sees them
    tok = proc.tokenizer if proc is not None else load_tokenizer(model) if model else None
    try:
        rep = inspect_data(path, tok, max_length=max_length, columns=mapping, processor=proc)
    except DataError as e:
        raise StudioError(str(e).replace(str(path), name)) from None
    lens = sorted(rep.token_lengths)
    return {
        "name": name, "columns": names, "mapping": mapping or {}, "saved_columns": saved_columns(settings, name),
        "standard_fields": list(STANDARD_FIELDS), "format": rep.format, "records": rep.records, "invalid": rep.invalid[:20],
        "n_invalid": len(rep.invalid), "roles": rep.roles, "duplicates": rep.duplicates, "labels": rep.labels,
        "max_length": rep.max_length, "truncated": rep.truncated,
        "tokens": {"min": lens[0], "median": lens[len(lens) // 2], "p95": lens[min(len(lens) - 1, len(lens) * 95 // 100)],
                   "max": lens[-1],
                   "trained": sum(rep.target_tokens), "total": sum(lens)} if lens else None,
        "histogram": [{"low": lo, "high": hi, "count": c} for lo, hi, c in rep.histogram(12)],
        "example": [{"text": t, "trained": trained} for t, trained in rep.example],
        "images": rep.images,
    }


def prepare(settings: Settings, name: str, op: str, options: dict) -> dict:
    """Run clean, dedup or split (tunelab.data.prepare) on a library file; outputs go back to the library."""
    if op not in PREPARE_OPS:
        raise StudioError(f"unknown operation {op!r}; choose from {', '.join(PREPARE_OPS)}")
    src = dataset_path(settings, name)
    try:
        result = PREPARE_OPS[op](settings, src, read_dataset(src, name), options)
    except (TypeError, ValueError) as e:
        raise StudioError(f"{op} {name}: {e}") from None
    mapping = saved_columns(settings, name)
    for out in result["outputs"] if mapping else ():  # the outputs keep the file's columns, so its mapping too
        save_columns(settings, out, mapping)
    return result


def _write(settings: Settings, src: Path, tag: str, res) -> dict:
    from tunelab.data.io import write_records

    dst = unique_path(settings.datasets, f"{src.stem}.{tag}.jsonl")
    write_records(dst, res.kept)
    return {"outputs": [dst.name], "counts": dict(res.counts), "rejected": res.rejected[:20]}


def _clean(settings: Settings, src: Path, records, options: dict) -> dict:
    from tunelab.data.prepare.clean import clean

    allowed = {"min_chars", "max_chars"}
    return _write(settings, src, "clean", clean(records, **{k: v for k, v in options.items() if k in allowed}))


def _dedup(settings: Settings, src: Path, records, options: dict) -> dict:
    from tunelab.data.prepare.dedup import dedup

    allowed = {"mode", "threshold"}
    return _write(settings, src, "dedup", dedup(records, **{k: v for k, v in options.items() if k in allowed}))


def _split(settings: Settings, src: Path, records, options: dict) -> dict:
    from tunelab.data.io import write_records
    from tunelab.data.prepare.split import split

    allowed = {"val", "test", "seed"}
    res = split(records, **{k: v for k, v in options.items() if k in allowed})
    outs = []
    for part, rows in res.parts.items():
        if rows:
            dst = unique_path(settings.datasets, f"{src.stem}.{part}.jsonl")
            write_records(dst, rows)
            outs.append(dst.name)
    return {"outputs": outs, "counts": {k: len(v) for k, v in res.parts.items()}, "rejected": []}


PREPARE_OPS = {"clean": _clean, "dedup": _dedup, "split": _split}


def delete_dataset(settings: Settings, name: str) -> None:
    """Remove a library file, its column mapping and, for a zip upload, the folder holding its images."""
    from tunelab.studio.image_zip import image_folder_of

    path = dataset_path(settings, name)
    images = image_folder_of(settings, path.name)
    _columns_file(settings, name).unlink(missing_ok=True)
    path.unlink()
    if images is not None:
        shutil.rmtree(images, ignore_errors=True)
