"""Peak memory of DPO on CPU: 4 real pairs x 192 tokens, SmolLM2-135M + LoRA, full logits vs chunked log-probs.

Each measurement runs in a fresh Python process (peak RSS only grows within a process) and reports
``resource.getrusage(RUSAGE_SELF).ru_maxrss``:

- ``load``: the process after loading the model and attaching LoRA, no training (the floor);
- ``dpo``: ``tunelab.train`` for 2 DPO steps of 4 pairs (the reference forward in every step, LoRA r 16 on all
  linear layers), every pair cut to 192 tokens, with ``train.speed.chunked_ce`` on (log-probs from hidden
  states chunk by chunk) or off (log-softmax of the full logits, the path before the chunked one existed);
  ``dpo-chunked-checkpointing`` adds ``train.gradient_checkpointing`` (activations recomputed in backward).

Usage (from the repository root; add ``--src DIR`` to measure another checkout's sources)::

    python benchmarks/scripts/dpo_memory.py --data ../shared/data/llamafactory_demo/dpo_en_demo.json \
        --out benchmarks/results/dpo-memory-cpu.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GIB = 1024 ** 3


def child(variant: str, data: str, out_dir: str) -> dict:
    """Run one variant in this process and return its peak RSS (ru_maxrss is in KiB on Linux)."""
    import torch

    torch.set_num_threads(1)
    t0 = time.time()
    if variant == "load":
        from tunelab.config.methods import LoraCfg
        from tunelab.methods import get_method
        from tunelab.models import load_model

        get_method("lora").apply(load_model("smollm2-135m"), LoraCfg(r=16, alpha=32))
    else:
        import tunelab

        tunelab.train({
            "model": {"name": "smollm2-135m"}, "stage": "dpo", "output_dir": str(Path(out_dir) / variant),
            "data": {"train": data, "max_samples": 8, "val_size": 0, "max_length": 192},
            "method": {"name": "lora", "r": 16, "alpha": 32}, "preference": {"loss": "sigmoid", "beta": 0.1},
            "train": {"max_steps": 2, "batch_size": 4, "grad_accum": 1, "lr": 2e-4, "seed": 0, "report": False,
                      "gradient_checkpointing": variant.endswith("-checkpointing"),
                      "speed": {"chunked_ce": variant.startswith("dpo-chunked")}}}, progress=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"variant": variant, "peak_rss_gib": round(peak / GIB, 3), "seconds": round(time.time() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="dpo_en_demo.json (ShareGPT preference pairs)")
    ap.add_argument("--out", type=Path, default=None, help="append one JSON line per variant here")
    ap.add_argument("--src", default=None, help="sources to measure (PYTHONPATH of the child processes)")
    ap.add_argument("--variants", default="load,dpo-full-logits,dpo-chunked,dpo-chunked-checkpointing")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--tmp", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.data, args.tmp)))
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if args.src:
        env["PYTHONPATH"] = args.src
    with tempfile.TemporaryDirectory() as tmp:
        for variant in args.variants.split(","):
            proc = subprocess.run([sys.executable, __file__, "--data", args.data, "--child", variant, "--tmp", tmp],
                                  env=env, capture_output=True, text=True, check=True)
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            row.update({"src": args.src or "installed", "pairs": 4, "max_length": 192, "model": "smollm2-135m",
                        "method": "lora r16 all-linear", "date": time.strftime("%Y-%m-%d")})
            print(json.dumps(row), flush=True)
            if args.out:
                with args.out.open("a", encoding="utf-8") as f:
                    f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
