"""Studio settings and the path rules that keep every file inside the studio's folders.

Everything the studio writes lives under one data dir:

    studio/
      studio.db        the job queue (SQLite)
      datasets/        uploaded and prepared data files
      jobs/<id>/       config.yaml + train.log of each job
      runs/<name>/     run folders written by `tunelab train`
      exports/         merged / GGUF / Ollama exports
      models/          a default model root (local HF folders and .gguf files)

User-supplied names never become paths directly: `safe_name` reduces them to a plain file
name, and `inside` refuses any path that resolves outside an allowed root (so
`../../etc/passwd` and symlinks pointing out are both rejected). Both refuse control characters
(a NUL byte makes the OS calls raise) and names too long for the file system, so every route that
takes a name or a path from a request answers 400 for them.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

DATA_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet")
MAX_PATH_CHARS = 4096
"""Longest path accepted (Linux's PATH_MAX); a longer one is refused before it reaches the OS."""
MAX_PART_BYTES = 255
"""Longest file or folder name accepted, in UTF-8 bytes (NAME_MAX of common file systems)."""
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
TOKEN_ENV = "TUNELAB_STUDIO_TOKEN"
"""The environment variable holding the studio's token (not visible in `ps`, unlike `--auth TOKEN`)."""


class StudioError(ValueError):
    """A request the studio refuses; the message says what was wrong and what to do (HTTP 400)."""


class NotFound(StudioError):
    """A dataset, job or run that does not exist (HTTP 404)."""


@dataclass
class Settings:
    """Where the studio keeps its files and how it runs jobs."""

    data_dir: Path = Path("studio")
    model_roots: list[Path] = field(default_factory=list)
    slots: int = 1
    max_upload_mb: float = 200.0
    auth_token: str | None = None
    poll_s: float = 1.0

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).resolve()
        self.model_roots = [Path(p).resolve() for p in self.model_roots] or [self.data_dir / "models"]
        for d in (self.datasets, self.jobs, self.runs, self.exports, *self.model_roots):
            d.mkdir(parents=True, exist_ok=True)

    @property
    def datasets(self) -> Path:
        return self.data_dir / "datasets"

    @property
    def jobs(self) -> Path:
        return self.data_dir / "jobs"

    @property
    def runs(self) -> Path:
        return self.data_dir / "runs"

    @property
    def exports(self) -> Path:
        return self.data_dir / "exports"

    @property
    def db(self) -> Path:
        return self.data_dir / "studio.db"

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


def safe_name(name: str, allowed_suffixes: tuple[str, ...] | None = None) -> str:
    """A user-given name reduced to a plain file name: no folders, no dots in front, no odd characters.

    `../../etc/passwd` becomes `passwd`; an empty result or a suffix not in `allowed_suffixes`
    is refused with a StudioError.
    """
    check_chars(str(name), "file name", length=False)  # a long name is cut below, not refused
    base = unicodedata.normalize("NFKC", str(name)).replace("\\", "/").split("/")[-1]
    base = re.sub(r"[^\w.\-]+", "_", base).lstrip("._-")[:120]
    if not base or base in (".", ".."):
        raise StudioError(f"{name!r}: not a usable file name; use letters, digits, '-', '_' and '.'")
    if allowed_suffixes is not None and Path(base).suffix.lower() not in allowed_suffixes:
        raise StudioError(f"{name!r}: unsupported file type; upload one of {', '.join(allowed_suffixes)}")
    return base


def unique_path(folder: Path, name: str) -> Path:
    """`folder/name`, or `folder/stem-2.ext`, `-3`... so an existing file is never overwritten."""
    p = folder / name
    stem, suffix = Path(name).stem, Path(name).suffix
    n = 2
    while p.exists():
        p = folder / f"{stem}-{n}{suffix}"
        n += 1
    return p


def check_chars(text: str, what: str = "path", shown: str | None = None, length: bool = True) -> None:
    """Refuse a name or path holding a control character (NUL included) or a lone surrogate, or too long
    for the file system, with a StudioError (HTTP 400) instead of the ValueError / OSError the OS call raises."""
    bad = _CONTROL.search(text)
    if bad:
        at = "" if shown else f" at position {bad.start()}"  # a position in the joined path would mislead
        raise StudioError(f"{what} {shown or short_repr(text)} contains the control character U+{ord(bad.group()):04X}"
                          f"{at}; remove it")
    try:
        parts = [len(part.encode("utf-8")) for part in text.replace("\\", "/").split("/")]
    except UnicodeEncodeError:
        raise StudioError(f"{what} {shown or short_repr(text)} holds a lone UTF-16 surrogate (half of a character); "
                          "remove it") from None
    if length and (len(text) > MAX_PATH_CHARS or max(parts) > MAX_PART_BYTES):
        raise StudioError(f"{what} {shown or short_repr(text)} is too long ({len(text)} characters; at most "
                          f"{MAX_PATH_CHARS}, and {MAX_PART_BYTES} bytes per name); use a shorter name")


def short_repr(text: str, limit: int = 80) -> str:
    """repr() of a user's value cut to `limit` characters, so a huge value is never echoed back whole."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def inside(path: str | Path, roots: list[Path], what: str = "path", shown: str | None = None) -> Path:
    """The resolved path if it lies under one of `roots`, else a StudioError naming the roots.

    `shown` is how the path appears in the message (what the user typed) when `path` was joined to a base.
    A control character, a lone surrogate or an over-long path is refused the same way (check_chars).
    """
    check_chars(str(path), what, shown)
    p = Path(path).expanduser()
    resolved = p.resolve()
    for root in roots:
        if resolved == root or resolved.is_relative_to(root):
            return resolved
    raise StudioError(f"{what} {shown or repr(str(path))} is outside the studio's folders ({', '.join(map(str, roots))}); "
                      "use a file from the dataset library or a model under a model root")


def job_name(text: str) -> str:
    """A run name usable as a folder: letters, digits, '-' and '_'."""
    name = re.sub(r"[^\w\-]+", "-", unicodedata.normalize("NFKC", text)).strip("-_")[:80]
    if not name:
        raise StudioError(f"{text!r}: a run name needs at least one letter or digit")
    return name
