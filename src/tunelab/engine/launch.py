"""Start a training run on several local processes with torchrun (`tunelab train CONFIG --nproc N`)."""

from __future__ import annotations

import os
import subprocess
import sys


def torchrun_command(nproc: int, args: list[str]) -> list[str]:
    """The torchrun command line that runs `tunelab ARGS` on `nproc` processes of this machine.

    `--standalone` gives a private single-node rendezvous on a free port; multi-node runs call
    torchrun themselves with --nnodes and --rdzv-endpoint (docs/distributed.md).
    """
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "tunelab", *args]


def child_env() -> dict[str, str]:
    """This environment plus settings every rank needs: NCCL_NVLS_ENABLE=0 (NVLink multicast stays off)."""
    env = dict(os.environ)
    env.setdefault("NCCL_NVLS_ENABLE", "0")
    env.setdefault("OMP_NUM_THREADS", "1")  # torchrun's own default, set here to silence its warning
    return env


def run_torchrun(nproc: int, args: list[str]) -> int:
    """Run `tunelab ARGS` on `nproc` local processes; returns torchrun's exit code."""
    if nproc < 1:
        raise ValueError(f"--nproc: must be at least 1 (got {nproc})")
    return subprocess.call(torchrun_command(nproc, args), env=child_env())




def rank_label() -> str:
    """"[rank R/N] " when this process is one of several torchrun ranks, else "" (prefix for messages)."""
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    return f"[rank {rank}/{world}] " if world > 1 else ""


def is_launched_rank() -> bool:
    """True inside a process started by torchrun (so --nproc must not start another torchrun)."""
    return "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ


def is_main_rank() -> bool:
    """True for rank 0 (or a single process): the one that prints progress and results."""
    return os.environ.get("RANK", "0") == "0"


def ranked(error: BaseException) -> BaseException:
    """The error with its message prefixed by the rank in a multi-process run (the error itself otherwise)."""
    label = rank_label()
    return RuntimeError(f"{label}{error}") if label else error


__all__ = ["child_env", "is_launched_rank", "is_main_rank", "rank_label", "ranked", "run_torchrun", "torchrun_command"]
