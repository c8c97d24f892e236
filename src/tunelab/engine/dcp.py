"""Checkpoints of a run spread over several processes, resumable at any process count.

A distributed checkpoint is the usual `checkpoints/step-N/` folder (see engine/checkpoint.py) with:
- `weights/`: the method's HF/PEFT folder, consolidated on rank 0 (loadable without tunelab);
- DDP: `optimizer.pt` from rank 0 (every replica holds the same state);
- FSDP2: `dcp/`, the sharded model and optimizer state written by every rank with
  torch.distributed.checkpoint (DCP), which reshards on load: 2 processes -> 1, 4 -> 2, ...;
- `scheduler.pt`, `rng.pt` (rank 0) and `rng-R.pt` (rank R), `trainer_state.json` (+ world_size, strategy);
- `manifest.json` last: size and SHA-256 of every file above, DCP shards included (rank 0 hashes them after
  the barrier, so on several nodes the shared filesystem must show every rank's files to rank 0).

Every rank writes into one temp folder that rank 0 renames into place after a barrier, so an
interrupted save never looks complete. Multi-node runs need output_dir on a shared filesystem.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import ModuleType

import torch

from tunelab.engine import distributed
from tunelab.engine.checkpoint import (
    STATE_FILE,
    checkpoint_dir,
    list_checkpoints,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    write_manifest,
)
from tunelab.utils.io import DiskFullError, is_disk_full, save_torch

DCP_DIR = "dcp"


def is_sharded(path: Path) -> bool:
    """True if a checkpoint folder holds DCP (FSDP) state."""
    return (Path(path) / DCP_DIR).is_dir()


def save_any_checkpoint(run_dir: Path, step: int, model, method: ModuleType, optimizer, scheduler,
                        position: dict, keep: int | None = None) -> Path:
    """Save checkpoints/step-N from every rank (the plain checkpoint in a single process); returns its path."""
    par = distributed.current()
    if not par.distributed:
        return save_checkpoint(run_dir, step, model, method, optimizer, scheduler, position, keep)
    target = checkpoint_dir(run_dir, step)
    tmp = target.with_name(f".{target.name}.partial")
    if par.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    distributed.barrier()
    if par.fsdp:
        import torch.distributed.checkpoint as tdcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_sd, optim_sd = get_state_dict(model, optimizer)
        tdcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=tmp / DCP_DIR)
    full = distributed.consolidated(model)
    if par.is_main:
        method.save(full, tmp / "weights")
        if not par.fsdp:
            save_torch(optimizer.state_dict(), tmp / "optimizer.pt")
        save_torch(scheduler.state_dict(), tmp / "scheduler.pt")
        save_torch(rng_state(), tmp / "rng.pt")
    save_torch(rng_state(), tmp / f"rng-{par.rank}.pt")
    distributed.barrier()
    if par.is_main:
        state = {"step": step, **position, "world_size": par.world_size, "strategy": par.strategy}
        try:
            (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
            write_manifest(tmp)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if is_disk_full(exc):
                raise DiskFullError(target) from exc
            raise
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
        if keep:
            for old in list_checkpoints(run_dir)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    distributed.barrier()
    return target


def load_any_checkpoint(path: Path, model, method: ModuleType, optimizer, scheduler) -> dict:
    """Restore a checkpoint written by any number of processes into this run; returns the saved position.

    DCP state (FSDP) is resharded to the current process count (or loaded whole in a single process);
    a plain checkpoint is loaded as engine/checkpoint.py does. Each rank gets its own RNG state back
    when the checkpoint has one for it.
    """
    path = Path(path)
    par = distributed.current()
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"{path}: not a tunelab checkpoint (no {STATE_FILE})")
    if is_sharded(path):
        import torch.distributed.checkpoint as tdcp
        from torch.distributed.checkpoint.state_dict import (
            get_state_dict,
            set_state_dict,
        )

        model_sd, optim_sd = get_state_dict(model, optimizer)
        state = {"model": model_sd, "optim": optim_sd}
        tdcp.load(state, checkpoint_id=path / DCP_DIR)
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
        set_rng_state(torch.load(path / "rng.pt", weights_only=True))
        saved = json.loads((path / STATE_FILE).read_text())
    elif par.fsdp:
        raise ValueError(f"{path}: this checkpoint was written without FSDP (no {DCP_DIR}/ folder); resume it with "
                         "parallel.strategy=ddp or in a single process")
    else:
        saved = load_checkpoint(path, distributed.unwrap(model), method, optimizer, scheduler)
    own_rng = path / f"rng-{par.rank}.pt"
    if par.distributed and own_rng.is_file():
        set_rng_state(torch.load(own_rng, weights_only=True))
    saved.pop("world_size", None)
    saved.pop("strategy", None)
    return saved


__all__ = ["DCP_DIR", "is_sharded", "load_any_checkpoint", "save_any_checkpoint"]
