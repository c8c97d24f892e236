"""Train every method for a few steps on the same small real task and write a comparison table.

    python scripts/methods_table.py                      # all rows, writes the table into docs/methods.md
    python scripts/methods_table.py --rows lora,ia3 --steps 5 --no-write

Each row runs in its own process (so peak RSS is that row's), on CPU, with the bundled SmolLM2-135M-Instruct
and the first --samples records of ../shared/data/llamafactory_demo/alpaca_en_demo.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "llamafactory_demo" / "alpaca_en_demo.json"
DOC = REPO / "docs" / "methods.md"
START, END = "<!-- methods-table:start -->", "<!-- methods-table:end -->"

# label (no commas: --rows splits on them) -> (method section, optim section, peak lr)
ROWS: dict[str, tuple[dict, dict, float]] = {
    "full": ({"name": "full"}, {}, 2e-5),
    "full + adafactor": ({"name": "full"}, {"name": "adafactor"}, 2e-5),
    "full + galore_adamw (r=32)": ({"name": "full"}, {"name": "galore_adamw", "galore": {"rank": 32,
                                                                                         "update_interval": 5}}, 2e-5),
    "full + badam (switch 2)": ({"name": "full"}, {"name": "badam", "badam": {"switch_interval": 2}}, 2e-5),
    "freeze (top 4 layers)": ({"name": "freeze", "layers": 4, "head": False}, {}, 5e-5),
    "lora r=8": ({"name": "lora", "r": 8, "alpha": 16}, {}, 2e-4),
    "lora r=8 dora": ({"name": "lora", "r": 8, "alpha": 16, "dora": True}, {}, 2e-4),
    "lora r=8 lora+ (x16)": ({"name": "lora", "r": 8, "alpha": 16, "lora_plus_ratio": 16}, {}, 2e-4),
    "qlora r=8 (nf4)": ({"name": "qlora", "r": 8, "alpha": 16}, {}, 2e-4),
    "adapter (pfeiffer /16)": ({"name": "adapter"}, {}, 1e-3),
    "ia3": ({"name": "ia3"}, {}, 3e-3),
    "prefix (16)": ({"name": "prefix", "num_virtual_tokens": 16}, {}, 3e-3),
    "ptuning_v2 (16)": ({"name": "ptuning_v2", "num_virtual_tokens": 16}, {}, 3e-3),
    "prompt (16)": ({"name": "prompt", "num_virtual_tokens": 16}, {}, 3e-3),
    "ptuning (16)": ({"name": "ptuning", "num_virtual_tokens": 16}, {}, 3e-3),
}


def run_one(label: str, steps: int, samples: int, out: Path) -> dict:
    """Train one row in this process and return its numbers."""
    import tunelab

    method, optim, lr = ROWS[label]
    cfg = {"model": {"name": "smollm2-135m"}, "method": method, "optim": optim,
           "data": {"train": str(DATA), "max_samples": samples, "max_length": 128, "val_size": 0.25},
           "train": {"max_steps": steps, "batch_size": 4, "lr": lr, "warmup_ratio": 0.0, "seed": 0, "device": "cpu"},
           "output_dir": str(out)}
    run = tunelab.train(cfg, progress=False)
    s, info = run.summary, run.info
    return {"label": label, "trainable": info["trainable_params"], "total": info["total_params"],
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "s_per_step": s["elapsed_s"] / max(s["steps"], 1), "train_loss": s["train_loss"], "eval_loss": s["eval_loss"]}


def table(rows: list[dict], steps: int, samples: int) -> str:
    lines = [(f"Measured on CPU (2 shared cores), SmolLM2-135M-Instruct fp32, {samples} alpaca_en_demo records "
             f"(25% held out), max_length 128, batch 4, {steps} steps. Peak memory is the process's peak RSS "
             "(model load included)."), "",
             "| method | trainable params | % | peak RSS (MiB) | s / step | final train loss | eval loss |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['label']} | failed: {r['error'][:80]} | | | | | |")
            continue
        lines.append(f"| {r['label']} | {r['trainable']:,} | {100 * r['trainable'] / r['total']:.3f} | "
                     f"{r['peak_rss_mib']:.0f} | {r['s_per_step']:.2f} | {r['train_loss']:.4f} | {r['eval_loss']:.4f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default=",".join(ROWS), help="comma-separated row labels (labels hold no commas)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--no-write", action="store_true", help="print the table instead of updating docs/methods.md")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # child mode: one row, JSON on stdout
    args = ap.parse_args()
    if args.one:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(run_one(args.one, args.steps, args.samples, Path(tmp) / "run")))
        return
    rows: list[dict] = []
    rows_wanted = [r.strip() for r in args.rows.split(",") if r.strip()]
    for label in rows_wanted:
        if label not in ROWS:
            raise SystemExit(f"--rows: unknown row {label!r}; choose from {', '.join(ROWS)}")
        proc = subprocess.run([sys.executable, __file__, "--one", label, "--steps", str(args.steps),
                               "--samples", str(args.samples)], capture_output=True, text=True, check=False)
        if proc.returncode:
            rows.append({"label": label, "error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"})
        else:
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(rows[-1], file=sys.stderr, flush=True)
        write(table(rows, args.steps, args.samples), skip=args.no_write)
    if args.no_write:
        print(table(rows, args.steps, args.samples))


def write(text: str, skip: bool) -> None:
    """Put the table between the markers in docs/methods.md (after every row, so a stopped run keeps its rows)."""
    if skip:
        return
    from tunelab.utils.io import atomic_write_text

    doc = DOC.read_text(encoding="utf-8")
    if START not in doc or END not in doc:
        raise SystemExit(f"{DOC}: no {START} ... {END} markers to put the table between")
    head, rest = doc.split(START, 1)
    atomic_write_text(DOC, head + START + "\n" + text + "\n" + END + rest.split(END, 1)[1])


if __name__ == "__main__":
    main()
