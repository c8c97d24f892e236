"""Atomic, resumable checkpoints: trained weights, optimizer, scheduler, RNG states and data position.

A checkpoint is a folder written under a temp name and renamed into place, so a crash mid-write
never leaves a checkpoint that looks complete. Optimizer/scheduler/RNG states are tensors and
plain containers, loaded with `weights_only=True` (no arbitrary unpickling).
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from types import ModuleType

import torch

from tunelab.runfolder import RunFolder
from tunelab.utils.io import atomic_dir

STATE_FILE = "trainer_state.json"


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return RunFolder(run_dir).checkpoint_dir(step)


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
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(rng_state(), tmp / "rng.pt")
        (tmp / STATE_FILE).write_text(json.dumps({"step": step, **position}, indent=2))
    if keep:
        for old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return target


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    return [p for p in RunFolder(run_dir).checkpoint_dirs() if (p / STATE_FILE).is_file()]


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
