"""Run configurations in fresh processes (clean GPU memory, a compile failure stays contained) and the peer.

`python -m tunelab.bench.runner '<json BenchCfg>'` measures one configuration and prints
its row as one JSON line; `run_isolated` drives it. `run_peer` runs the HF+PEFT peer
script (shared/bench/peer_lora.py) on the same shape, batch and length.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from tunelab.bench.step import BenchCfg

# The standard sweep: name -> overrides of BenchCfg's defaults (every means on, no checkpointing).
SWEEP: dict[str, dict] = {
    "fast": {},
    "lean": {"grad_ckpt": True},
    "lean-eager": {"grad_ckpt": True, "compile": False},
    "ckpt4": {"grad_ckpt": True, "ckpt_every": 4},
    "liger-ce": {"ce_backend": "liger"},
    "no-compile": {"compile": False},
    "no-chunked-ce": {"chunked_ce": False},
    "no-fused-lora": {"fused_lora": False},
    "plain": {"chunked_ce": False, "fused_lora": False, "compile": False},
    "packed": {"packing": True},
    "budget": {"act_budget": 0.8},
    "full-ckpt": {"method": "full", "grad_ckpt": True},
    "full": {"method": "full"},
    "fast-autotune": {"compile_mode": "max-autotune-no-cudagraphs"},
    "fast-graphs": {"compile_mode": "reduce-overhead"},
    "full-ckpt4": {"method": "full", "grad_ckpt": True, "ckpt_every": 4},
    "full-ckpt2": {"method": "full", "grad_ckpt": True, "ckpt_every": 2},
    "qlora-lean": {"method": "qlora", "grad_ckpt": True, "compile": False},
    "qlora-lean-compiled": {"method": "qlora", "grad_ckpt": True},
    "long": {"grad_ckpt": True, "compile": False, "batch": 1, "steps": 1, "warmup": 1},
}


def _last_json(stdout: str) -> dict | None:
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else None


def run_isolated(cfg: BenchCfg, timeout: float = 900) -> dict:
    """Measure `cfg` in a child process; a failure comes back as a row with `error`."""
    cmd = [sys.executable, "-m", "tunelab.bench.runner", json.dumps(asdict(cfg))]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return asdict(cfg) | {"tool": "tunelab", "error": f"timed out after {timeout:.0f}s"}
    row = _last_json(proc.stdout)
    if proc.returncode != 0 or row is None:
        return asdict(cfg) | {"tool": "tunelab", "error": (proc.stderr or proc.stdout)[-1500:]}
    return row


def find_peer_script(explicit: str | Path | None = None) -> Path:
    """The peer script: `explicit`, else shared/bench/peer_lora.py beside or inside the repo."""
    candidates = [Path(explicit)] if explicit else [
        Path("../shared/bench/peer_lora.py"), Path("shared/bench/peer_lora.py")]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError("peer script not found; looked at " + ", ".join(map(str, candidates))
                            + " (pass --peer-script PATH)")


def run_peer(script: Path, shape: str, batch: int, seq: int, method: str, grad_ckpt: bool,
             liger: bool = False, steps: int = 10, warmup: int = 3, timeout: float = 900) -> dict:
    """One peer configuration in its own process; returns its JSON row (or one with `error`)."""
    cmd = [sys.executable, str(script), "--shape", shape, "--bs", str(batch), "--seq", str(seq),
           "--mode", method, "--steps", str(steps), "--warmup", str(warmup)]
    cmd += ["--gc"] if grad_ckpt else []
    cmd += ["--liger"] if liger else []
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"peer": "hf+peft", "args": cmd[2:], "error": f"timed out after {timeout:.0f}s"}
    row = _last_json(proc.stdout)
    if proc.returncode != 0 or row is None:
        return {"peer": "hf+peft", "args": cmd[2:], "error": (proc.stderr or proc.stdout)[-1500:]}
    return row | {"steps": steps, "warmup": warmup}


def main(argv: list[str] | None = None) -> None:
    """Child-process entry: measure one JSON-encoded BenchCfg, print its row."""
    from tunelab.bench.results import environment
    from tunelab.bench.step import measure

    args = sys.argv[1:] if argv is None else argv
    cfg = BenchCfg(**json.loads(args[0]))
    print(json.dumps(measure(cfg) | environment()), flush=True)


if __name__ == "__main__":
    main()
