"""Leaving the process after a finished training run without the interpreter's teardown.

When Python exits normally it frees every module and object one by one and runs the C++ destructors of
torch and the CUDA driver, after the run's results are already on disk: 1.3 s after a tiny CPU training run
(and 3 s passed between the last line and the exit on the GPU machines of docs/speed.md). `tunelab train`
leaves through `fast_exit` instead: the exit handlers still run (atexit: logging, trackers, the compiler's
worker pool), stdout and stderr are flushed, and the process ends with the same exit code; what is skipped has
no effect outside the process. Only the console-script entry point does this (`tunelab.cli.main`), never a
caller that imports tunelab.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import NoReturn

_FINISHED = {"train": False}


def mark_train_finished() -> None:
    """Record that a training command completed (its run folder is written); `main` may then exit fast."""
    _FINISHED["train"] = True


def train_finished() -> bool:
    """Whether `mark_train_finished` was called in this process."""
    return _FINISHED["train"]


def can_exit_fast() -> bool:
    """True when nothing would be lost by skipping teardown: no other non-daemon thread is still running
    (a normal exit would wait for it), no profiler or tracer is attached (`python -m cProfile -m tunelab ...`
    writes its report after the command returns), and this Python can run the exit handlers itself."""
    others = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon and t.is_alive()]
    watched = sys.getprofile() is not None or sys.gettrace() is not None
    return not others and not watched and hasattr(atexit, "_run_exitfuncs")


def fast_exit(code: int = 0) -> NoReturn:
    """End the process with `code` after running the exit handlers and flushing stdout/stderr (see module doc)."""
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing more can be written anyway
            pass
    os._exit(code)
