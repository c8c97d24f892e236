"""How many CPU threads torch should use, and applying it.

torch sizes its intra-op thread pool from the machine's cores, not from what this process may
use. In a container with a CPU quota, or on a machine shared with other jobs (taskset, a
scheduler's affinity mask), that oversubscribes: one measured CPU run took 60 s/step with the
default threads and 14 s/step with one. The resolved count, in order of precedence:

1. `train.threads` in the run config (training only);
2. the `TUNELAB_THREADS` environment variable;
3. `OMP_NUM_THREADS`, which torch itself honours;
4. the cores this process may use: its CPU affinity (os.sched_getaffinity), capped by the
   cgroup CPU quota (cgroup v2 `cpu.max`, or v1 `cpu.cfs_quota_us / cpu.cfs_period_us`) if set.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

ENV = "TUNELAB_THREADS"
CGROUP_ROOT = Path("/sys/fs/cgroup")


def affinity_cpus() -> int:
    """Cores the scheduler lets this process run on (all cores where affinity is unknown)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS / Windows have no sched_getaffinity
        return max(1, os.cpu_count() or 1)


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None


def _own_cgroup_dirs(root: Path, proc_cgroup: Path) -> list[Path]:
    """This process's cgroup v2 folder (from /proc/self/cgroup) and its parents up to `root`, then `root`."""
    dirs: list[Path] = []
    text = _read(proc_cgroup) or ""
    for line in text.splitlines():
        if line.startswith("0::"):  # the cgroup v2 entry
            rel = line[3:].strip().strip("/")
            here = root / rel if rel else root
            while here != root and root in here.parents:
                dirs.append(here)
                here = here.parent
    return [*dirs, root]


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> float | None:
    """CPUs allowed by the cgroup quota (e.g. 2.5), or None when no quota is set or none can be read.

    cgroup v2 writes `cpu.max` as "QUOTA PERIOD" ("max PERIOD" for no limit); v1 has
    `cpu/cpu.cfs_quota_us` (-1 for no limit) and `cpu/cpu.cfs_period_us`. The tightest limit
    among this process's cgroup and its parents counts.
    """
    limits: list[float] = []
    for folder in _own_cgroup_dirs(root, proc_cgroup):
        text = _read(folder / "cpu.max")
        if text:
            quota, _, period = text.partition(" ")
            if quota != "max":
                try:
                    q, p = float(quota), float(period or 100000)
                except ValueError:
                    continue
                if q > 0 and p > 0:
                    limits.append(q / p)
    for v1 in (root / "cpu", root / "cpu,cpuacct"):
        quota, period = _read(v1 / "cpu.cfs_quota_us"), _read(v1 / "cpu.cfs_period_us")
        try:
            if quota and period and float(quota) > 0 and float(period) > 0:
                limits.append(float(quota) / float(period))
        except ValueError:
            continue
    return min(limits) if limits else None


def available_cpus(root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> int:
    """Cores this process may use: its affinity, capped by the cgroup quota (rounded up, at least 1)."""
    cpus = affinity_cpus()
    limit = cgroup_cpu_limit(root, proc_cgroup)
    return max(1, min(cpus, math.ceil(limit))) if limit else cpus


def _positive_int(value: str, name: str) -> int:
    try:
        n = int(value.strip())
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"{name}={value!r}: must be a whole number of threads >= 1 (e.g. {name}=4), or unset")
    return n


def resolve_threads(configured: int | None = None, env: Mapping[str, str] | None = None,
                    root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> tuple[int, str]:
    """(threads, where the number came from): config, TUNELAB_THREADS, OMP_NUM_THREADS or the available cores."""
    env = os.environ if env is None else env
    if configured is not None:
        return int(configured), "train.threads"
    if env.get(ENV, "").strip():
        return _positive_int(env[ENV], ENV), ENV
    if env.get("OMP_NUM_THREADS", "").strip():
        try:
            return _positive_int(env["OMP_NUM_THREADS"], "OMP_NUM_THREADS"), "OMP_NUM_THREADS"
        except ValueError:
            pass  # torch warns about a bad OMP_NUM_THREADS itself; fall back to the cores
    return available_cpus(root, proc_cgroup), "available cores"


def apply_threads(configured: int | None = None) -> int:
    """Resolve the thread count (see `resolve_threads`), give it to torch.set_num_threads, and return it."""
    import torch

    threads, _ = resolve_threads(configured)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads
