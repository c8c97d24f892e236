"""Start the compiler's worker processes while the model loads, not when the first layer compiles.

torch.compile's inductor backend compiles GPU kernels in a pool of worker processes (each one imports
torch and Triton: seconds). The pool starts with the first compilation, i.e. after the model has
loaded and the data is ready, on the critical path of step 1. Starting it at the top of a run lets the
workers come up while the weights load, so a fresh machine's first step waits only for compiling.
"""

from __future__ import annotations

import os

DISABLE_ENV = "TUNELAB_COMPILE_WARMUP"
"""Set to 0 to leave the worker pool to start with the first compilation (torch's own behaviour)."""


def start_compile_workers() -> bool:
    """Start inductor's compile worker pool now (CUDA runs that will compile); True when it was started.

    Best effort: a torch without the pool (or with parallel compilation off) just compiles as before.
    """
    if os.environ.get(DISABLE_ENV, "1") == "0":
        return False
    try:
        from torch._inductor.async_compile import maybe_warm_pool
    except ImportError:  # a torch without inductor's worker pool
        return False
    try:
        maybe_warm_pool()
    except Exception:  # noqa: BLE001 - starting the pool early is an optimisation, never a reason to fail a run
        return False
    return True
