"""Atomic file and folder writes: a crash, Ctrl-C or a full disk never leaves a half-written output.

Files are created with the permissions a plain `open()` would give (0o666 minus the umask), not the 0600
of `tempfile`. A write that runs out of space raises `DiskFullError` naming the output, whatever library
was writing (Python, torch's zip writer and safetensors each report it differently).
"""

from __future__ import annotations

import datetime as _dt
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class DiskFullError(OSError):
    """An output could not be written because its filesystem is full; the message names the output."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(errno.ENOSPC, f"no space left on device at {path}")
        self.path = Path(path)

    def __str__(self) -> str:
        return f"no space left on device at {self.path}"


def is_disk_full(exc: BaseException) -> bool:
    """Whether `exc` (or an exception it was raised from) means the filesystem is full.

    Python raises OSError(ENOSPC); safetensors wraps it in its own error with "os error 28" in the text;
    torch.save loses it (see `save_torch`), which records the OSError it saw and re-raises that.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(exc)
        if "No space left on device" in text or "os error 28" in text or "Disk quota exceeded" in text:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


@contextmanager
def _disk_full_as(path: Path) -> Iterator[None]:
    """Re-raise a full-disk error inside the block as DiskFullError(path)."""
    try:
        yield
    except OSError as exc:
        if is_disk_full(exc) and not isinstance(exc, DiskFullError):
            raise DiskFullError(path) from exc
        raise


class _RecordingWriter:
    """A file wrapper that remembers the OSError of a failed write (torch's zip writer swallows it)."""

    def __init__(self, f) -> None:
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.f.flush()

    def __getattr__(self, name: str):
        return getattr(self.f, name)


def save_torch(obj: Any, path: str | Path) -> None:
    """`torch.save(obj, path)`, but a full disk raises DiskFullError(path) instead of torch's
    "unexpected pos N vs M"."""
    import torch

    path = Path(path)
    try:
        with open(path, "wb") as raw:
            f = _RecordingWriter(raw)
            try:
                torch.save(obj, f)
            except RuntimeError as exc:
                if f.error is not None:
                    raise f.error from exc
                raise
    except BaseException as exc:
        if is_disk_full(exc):
            raise DiskFullError(path) from exc
        raise


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (setting it, even briefly, would
    race with other threads creating files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o077)  # elsewhere: read it by setting a strict one for an instant
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write bytes to `path` via a temp file in the same folder and an atomic rename.

    The file gets 0o666 minus the umask, like `open(path, "w")` (mkstemp alone would make it 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _disk_full_as(path):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if is_disk_full(exc) and not isinstance(exc, DiskFullError):
            raise DiskFullError(path) from exc
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 text to `path` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Write `obj` as indented UTF-8 JSON, atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def atomic_write_jsonl(path: str | Path, rows: Iterable[dict]) -> Path:
    """Write one JSON object per line, atomically."""
    return atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows))


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temp folder beside `path`; on success it replaces `path` in one rename, on error it is removed.

    The folder gets 0o777 minus the umask (mkdtemp alone makes it 0700). Running out of space inside
    raises DiskFullError(path), and `path` keeps what it held before.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _disk_full_as(path):
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(exc):  # named by the output, not by the temp file that was being written
            raise DiskFullError(path) from exc
        raise


def stamped_path(folder: str | Path, stem: str, suffix: str = ".json") -> Path:
    """`folder/stem-YYYYmmdd-HHMMSS<suffix>`, or with -2, -3, ... appended when that name (or its
    `.predictions.jsonl` companion) is already taken, so results written within one second never overwrite."""
    base = f"{stem}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    for n in range(1, 10_000):
        path = Path(folder) / f"{base}{'' if n == 1 else f'-{n}'}{suffix}"
        if not path.exists() and not path.with_suffix(".predictions.jsonl").exists():
            return path
    raise FileExistsError(f"{folder}: no free name for {base}{suffix}")
