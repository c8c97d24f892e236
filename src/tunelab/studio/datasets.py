"""The dataset library: uploads streamed to disk, checked, inspected and prepared with tunelab.data.

Uploads are only ever read as data (JSON, JSONL, CSV, Parquet through tunelab's readers),
never executed; their names are sanitized and never overwrite another file.
"""

from __future__ import annotations

import os
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
    unique_path,
)

CHUNK = 1 << 20
PARQUET_MAGIC = b"PAR1"


class TooLarge(StudioError):
    """An upload over the size limit (HTTP 413)."""


def _check_content(path: Path, head: bytes, original: str) -> None:
    """Refuse content that cannot be the type its name claims (binary in a text file, non-Parquet .parquet)."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        if not head.startswith(PARQUET_MAGIC):
            raise StudioError(f"{original}: not a Parquet file (it does not start with PAR1)")
        return
    if b"\x00" in head:
        raise StudioError(f"{original}: binary content in a {suffix} file; upload UTF-8 text")
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 4:  # a cut multi-byte character at the end of the sample is fine
            raise StudioError(f"{original}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None


def save_upload(settings: Settings, filename: str, stream: BinaryIO) -> Path:
    """Stream an upload into datasets/ under a sanitized, unused name; refuse oversize or malformed files.

    The file is written to a temporary name first and only renamed into the library once it
    is complete and parses, so a failed upload leaves nothing behind.
    """
    name = safe_name(filename, DATA_SUFFIXES)
    limit = settings.max_upload_bytes
    fd, tmp = tempfile.mkstemp(dir=settings.datasets, prefix=".upload-", suffix=Path(name).suffix)
    size, head = 0, b""
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := stream.read(CHUNK):
                size += len(chunk)
                if size > limit:
                    raise TooLarge(f"{filename}: larger than the upload limit of {settings.max_upload_mb:g} MB; "
                                   "start the studio with a larger --max-upload-mb or prepare the file with "
                                   "`tunelab data` first")
                if len(head) < 65536:
                    head += chunk[:65536 - len(head)]
                out.write(chunk)
        if size == 0:
            raise StudioError(f"{filename}: the file is empty")
        _check_content(Path(name), head, filename)
        records = read_dataset(Path(tmp))
        if not records:
            raise StudioError(f"{filename}: no records in the file")
        dst = unique_path(settings.datasets, name)
        os.link(tmp, dst)  # fails instead of overwriting if the name was taken meanwhile
        return dst
    except DataError as e:
        raise StudioError(str(e).replace(tmp, filename)) from None
    finally:
        Path(tmp).unlink(missing_ok=True)


def read_dataset(path: Path):
    """Records of a data file through tunelab's readers (JSON, JSONL, CSV, Parquet)."""
    from tunelab.data.sources import read_any

    return read_any(path)


def dataset_path(settings: Settings, name: str) -> Path:
    """The library file called `name` (refusing anything outside datasets/)."""
    p = inside(settings.datasets / name, [settings.datasets], "dataset")
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
                        "path": str(p.relative_to(settings.data_dir))})
    return out


def inspect(settings: Settings, name: str, model: str = "tiny-llama", max_length: int = 1024) -> dict:
    """Detected format, counts, token-length histogram and an example with trained spans marked."""
    from tunelab.data.inspect import inspect_data
    from tunelab.models import load_tokenizer

    path = dataset_path(settings, name)
    tok = load_tokenizer(model) if model else None
    rep = inspect_data(path, tok, max_length=max_length)
    lens = sorted(rep.token_lengths)
    return {
        "name": name, "format": rep.format, "records": rep.records, "invalid": rep.invalid[:20],
        "n_invalid": len(rep.invalid), "roles": rep.roles, "duplicates": rep.duplicates, "labels": rep.labels,
        "max_length": rep.max_length, "truncated": rep.truncated,
        "tokens": {"min": lens[0], "median": lens[len(lens) // 2], "max": lens[-1],
                   "trained": sum(rep.target_tokens), "total": sum(lens)} if lens else None,
        "histogram": [{"low": lo, "high": hi, "count": c} for lo, hi, c in rep.histogram(12)],
        "example": [{"text": t, "trained": trained} for t, trained in rep.example],
    }


def prepare(settings: Settings, name: str, op: str, options: dict) -> dict:
    """Run clean, dedup or split (tunelab.data.prepare) on a library file; outputs go back to the library."""
    if op not in PREPARE_OPS:
        raise StudioError(f"unknown operation {op!r}; choose from {', '.join(PREPARE_OPS)}")
    src = dataset_path(settings, name)
    try:
        return PREPARE_OPS[op](settings, src, read_dataset(src), options)
    except (TypeError, ValueError) as e:
        raise StudioError(f"{op} {name}: {e}") from None


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
    """Remove a library file."""
    dataset_path(settings, name).unlink()
