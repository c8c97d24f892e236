"""Atomic, resumable checkpoints: trained weights, optimizer, scheduler, RNG states and data position.

A checkpoint is a folder written under a temp name and renamed into place, so a crash mid-write
never leaves a checkpoint that looks complete. Its last file, `manifest.json`, holds every other
file's size and SHA-256, so a checkpoint damaged later (a truncated copy, a disk error) is found
before loading: resuming skips it, with one warning, for the newest checkpoint that verifies.
Optimizer/scheduler/RNG states are tensors and plain containers, loaded with `weights_only=True`
(no arbitrary unpickling).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
from pathlib import Path
from types import ModuleType

import torch

from tunelab.utils.io import atomic_dir, save_torch

STATE_FILE = "trainer_state.json"
MANIFEST_FILE = "manifest.json"

log = logging.getLogger("tunelab.checkpoint")


class CheckpointError(FileNotFoundError):
    """A checkpoint asked for by path is damaged; the message names the file that does not verify."""


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step-{step:06d}"


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: Path, step: int, model, method: ModuleType, optimizer, scheduler, position: dict,
                    keep: int | None = None) -> Path:
    """Write checkpoints/step-N atomically and prune the oldest beyond `keep`."""
    target = checkpoint_dir(run_dir, step)
    with atomic_dir(target) as tmp:
        method.save(model, tmp / "weights")
        save_torch(optimizer.state_dict(), tmp / "optimizer.pt")
        save_torch(scheduler.state_dict(), tmp / "scheduler.pt")
        save_torch(rng_state(), tmp / "rng.pt")
        (tmp / STATE_FILE).write_text(json.dumps({"step": step, **position}, indent=2))
        write_manifest(tmp)
    # temp folders of saves a kill -9 cut short (this process is the run's only writer, so none is live)
    for stale in target.parent.glob(".step-*"):
        if stale.name.endswith((".tmp", ".partial", ".old")):
            shutil.rmtree(stale, ignore_errors=True)
    if keep:
        for old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return target


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(folder: Path) -> Path:
    """Write folder/manifest.json: {relative path: {size, sha256}} of every file in it; call it last."""
    folder = Path(folder)
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_FILE):
        files[path.relative_to(folder).as_posix()] = {"size": path.stat().st_size, "sha256": _sha256(path)}
    out = folder / MANIFEST_FILE
    out.write_text(json.dumps({"version": 1, "files": files}, indent=1))
    with open(out, "rb") as f:  # on disk before the folder is renamed into place
        os.fsync(f.fileno())
    return out


def verify_checkpoint(path: Path) -> str | None:
    """None if the checkpoint is whole, else what is wrong ("optimizer.pt: 812 bytes, expected 9,530").

    Checks every file of its manifest for size, then SHA-256. Checkpoints from before manifests existed
    have only their trainer_state.json checked (they load as they always did).
    """
    path = Path(path)
    if not (path / STATE_FILE).is_file():
        return f"no {STATE_FILE}"
    manifest = path / MANIFEST_FILE
    if not manifest.is_file():
        return None
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        return f"{MANIFEST_FILE} unreadable ({exc})"
    for name, want in files.items():
        f = path / name
        if not f.is_file():
            return f"{name}: missing"
        size = f.stat().st_size
        if size != want["size"]:
            return f"{name}: {size:,} bytes, expected {want['size']:,}"
    for name, want in files.items():
        if _sha256(path / name) != want["sha256"]:
            return f"{name}: contents changed (SHA-256 differs from {MANIFEST_FILE})"
    return None


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoints of a run that were completely written, oldest first (not verified; see latest_valid_checkpoint)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step-*") if (p / STATE_FILE).is_file())


def latest_valid_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint whose manifest verifies; each newer damaged one is skipped with a one-line warning."""
    for path in reversed(list_checkpoints(run_dir)):
        problem = verify_checkpoint(path)
        if problem is None:
            return path
        log.warning("skipping damaged checkpoint %s (%s)", path, problem)
    return None


def check_checkpoint(path: Path) -> Path:
    """`path` if it verifies, else CheckpointError naming the damaged file (for an explicitly chosen checkpoint)."""
    problem = verify_checkpoint(path)
    if problem is not None:
        raise CheckpointError(f"train.resume: checkpoint {path} is damaged ({problem}); resume from an earlier one "
                              "or use train.resume=auto, which picks the newest that verifies")
    return Path(path)


def load_checkpoint(path: Path, model, method: ModuleType, optimizer, scheduler) -> dict:
    """Restore everything saved by save_checkpoint; returns the saved position (step, micro_index, ...)."""
    path = Path(path)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"{path}: not a tunelab checkpoint (no {STATE_FILE})")
    method.load_state(model, path / "weights")
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    set_rng_state(torch.load(path / "rng.pt", weights_only=True))
    return json.loads((path / STATE_FILE).read_text())
