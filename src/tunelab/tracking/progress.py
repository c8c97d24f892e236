"""Live training progress: a rich bar with loss, lr, tokens/s and ETA on a terminal; plain lines elsewhere."""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def process_rss_gib() -> float | None:
    """This process's peak resident memory in GiB (Linux/macOS), or None where unknown."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**30 if sys.platform == "darwin" else peak / 2**20


class TrainProgress:
    """Shows one line per update on non-terminals (at most ~25 lines a run), a live bar on terminals."""

    def __init__(self, total_steps: int, start_step: int = 0, console: Console | None = None, enabled: bool = True):
        self.total = total_steps
        self.console = console or Console(stderr=True)
        self.enabled = enabled
        self.live = enabled and self.console.is_terminal
        self.every = max(1, total_steps // 25)
        self.t0 = time.perf_counter()
        self.start_step = start_step
        self._bar = None
        if self.live:
            self._bar = Progress(
                TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                console=self.console, transient=False,
            )
            self._task = self._bar.add_task("train", total=total_steps, completed=start_step, info="")
            self._bar.start()

    @staticmethod
    def describe(m: dict) -> str:
        """One status line: epoch, loss, lr, grad norm, tokens/s, eval loss, memory (GPU peak or process RSS)."""
        parts = [f"ep {m['epoch']:.2f}"] if "epoch" in m else []
        if "loss" in m:
            parts.append(f"loss {m['loss']:.4f}")
        if "lr" in m:
            parts.append(f"lr {m['lr']:.2e}")
        if "grad_norm" in m:
            parts.append(f"gn {m['grad_norm']:.2f}")
        if "tokens_per_s" in m:
            parts.append(f"{m['tokens_per_s']:,.0f} tok/s")
        if "eval_loss" in m:
            parts.append(f"eval {m['eval_loss']:.4f}")
        mem = m.get("mem_gib", process_rss_gib())
        if mem is not None:
            parts.append(f"{mem:.1f} GiB")
        return "  ".join(parts)

    def update(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        if self.live:
            self._bar.update(self._task, completed=step, info=self.describe(metrics))
            return
        if step % self.every == 0 or step == self.total or step == self.start_step + 1:
            done = step - self.start_step
            elapsed = time.perf_counter() - self.t0
            eta = elapsed / max(done, 1) * (self.total - step)
            print(f"step {step}/{self.total}  {self.describe(metrics)}  ETA {eta:,.0f}s", file=sys.stderr, flush=True)

    def eval_progress(self, step: int):
        """A callback ``(done, total)`` showing an evaluation's batches: a second bar on terminals, else a line
        at most every ~10% (an evaluation of a large validation set takes minutes after the last step)."""
        if not self.enabled:
            return None
        state = {"task": None, "shown": -1}

        def tick(done: int, total: int) -> None:
            if self.live:
                if state["task"] is None:
                    state["task"] = self._bar.add_task("eval", total=total, completed=0, info=f"after step {step}")
                self._bar.update(state["task"], completed=done)
                return
            tenth = done * 10 // max(total, 1)
            if total > 1 and tenth > state["shown"]:
                state["shown"] = tenth
                print(f"eval at step {step}: batch {done}/{total}", file=sys.stderr, flush=True)

        self._eval_state = state
        return tick

    def eval_done(self) -> None:
        """Remove the evaluation bar (terminals); the plain display needs nothing."""
        state = getattr(self, "_eval_state", None)
        if self.live and state and state["task"] is not None:
            self._bar.remove_task(state["task"])
        self._eval_state = None

    def note(self, text: str) -> None:
        if self.enabled:
            self.console.print(text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
