"""Where benchmark rows go: JSON lines in benchmarks/results/<date>-<device>.jsonl, with the environment."""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from tunelab.utils.io import atomic_write_text


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def environment() -> dict:
    """Device name and library versions, stamped on every row."""
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return {"device": device, "torch": torch.__version__, "transformers": _version("transformers"),
                "peft": _version("peft"), "liger_kernel": _version("liger-kernel"),
                "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}


def results_path(folder: str | Path, device: str, date: str) -> Path:
    """benchmarks/results/2026-11-25-nvidia-h100-80gb-hbm3.jsonl style path."""
    slug = re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-") or "unknown"
    return Path(folder) / f"{date[:10]}-{slug}.jsonl"


def append_rows(folder: str | Path, rows: list[dict]) -> Path:
    """Append rows (each already carrying `device` and `date`) to the day's file, atomically."""
    if not rows:
        raise ValueError("no rows to append")
    path = results_path(folder, rows[0]["device"], rows[0]["date"])
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    new = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    atomic_write_text(path, old + new)
    return path
