"""train-e2e: a whole `tunelab train` run against the peers a user would pick instead, in one device call.

    python benchmarks/scripts/train_e2e.py --shape qwen2.5-1.5b --data DATA.json --tok TOKENIZER_DIR \
        --steps 200 --runs tunelab,tunelab-lean,trl,trl-gc,trl-liger,hf+peft,hf+peft-gc --machine TAG --out ROWS.jsonl

Builds a model folder once (random weights of the shape's real config, bf16, saved with the real tokenizer;
throughput does not depend on the weights), then runs every configuration as its own command on the same
data, LoRA r16 (alpha 32, dropout 0.05, all linears), `--bs` packed rows of `--seq` tokens per step and
`--steps` steps, without evaluation or mid-run checkpoints. Each row: `wall_s` (the whole command:
imports, tokenizing and packing, loading, training, saving), `steady_tok_s` (real tokens per second after
step 1), `first_step_s`, `peak_gib` (torch.cuda.max_memory_allocated of the process: load included).
HF+PEFT rows come from ../shared/bench/peer_lora.py (per step, random full rows; no wall time).
Run names: `tunelab` (default), `tunelab-lean` (train.speed.mode lean), `tunelab-graphs` (the default config plus
`train.speed.cuda_graphs=true` on the command line), `tunelab-fp32` (float32 on a CPU with bf16 matrix units); a
`-warm` suffix runs the same again (inductor cache warm).

On a CPU (`--device cpu`, shape `smollm2-135m`: the bundled model's real weights, dequantized once into an fp32
folder) each tool runs as its CPU user gets it: tunelab's defaults (padded batches, chunked loss, fused LoRA),
TRL unpacked in fp32 (`packing` is TRL's opt-in, and tunelab does not pack on a CPU), so both see the same
samples; `trl-bf16` is TRL with bf16 weights and `bf16=True`; `peak_gib` is then the process's peak RSS.

    python benchmarks/scripts/train_e2e.py --device cpu --shape smollm2-135m --tok - --bs 8 --seq 256 --steps 20 \
        --data ../shared/data/llamafactory_demo/alpaca_en_demo.json --runs tunelab,trl --machine TAG --out ROWS.jsonl
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def make_model(shape: str, tok: str, out: Path, device: str = "cuda") -> None:
    if (out / "config.json").is_file():
        return
    import torch
    from transformers import AutoModelForCausalLM

    sys.path.insert(0, str(HERE.parents[1] / "src"))
    if shape == "smollm2-135m":  # the bundled model, real weights, as an fp32 folder both tools load alike
        from tunelab.models import load_model, load_tokenizer

        load_model(shape, dtype="float32").save_pretrained(out)
        load_tokenizer(shape).save_pretrained(out)
        return
    from tunelab.bench.shapes import build_config

    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(build_config(shape), dtype=torch.bfloat16)
    model.save_pretrained(out)
    for f in Path(tok).iterdir():
        shutil.copy(f, out / f.name)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()


def run(cmd: list[str], log: Path, timeout: float, env: dict | None = None) -> tuple[float, int, float | None]:
    """Run `cmd`, writing each output line to `log` prefixed with the seconds since launch (where the
    fixed cost of a whole command goes: imports, loading, data, compilation, saving). Returns the wall
    seconds, the exit code and the command's peak resident memory in GiB (None if it timed out)."""
    t = time.perf_counter()
    rss = None
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                env=env)
        try:
            for line in proc.stdout:
                f.write(f"[{time.perf_counter() - t:7.1f}s] {line}")
                if time.perf_counter() - t > timeout:
                    raise subprocess.TimeoutExpired(cmd, timeout)
            _, status, usage = os.wait4(proc.pid, 0)  # output closed: the process is ending
            proc.returncode = rc = os.waitstatus_to_exitcode(status)
            rss = round(usage.ru_maxrss / 2**20, 2)   # KiB on Linux
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc = 124
        f.write(f"[{time.perf_counter() - t:7.1f}s] exit {rc}\n")
    return time.perf_counter() - t, rc, rss


# run-name parts (tunelab-PART-PART...) that change one train.speed switch, for profiling where time goes
SPEED_VARIANTS = {"noflex": {"flex_attention": False}, "noce": {"chunked_ce": False},
                  "nocompile": {"compile_layers": False}}
# `python -c` body that runs the CLI and prints dynamo/inductor's compile-time table at exit
CLI_WITH_COMPILE_TIMES = (
    "import atexit, sys, torch\n"
    "def _times():\n"
    "    try:\n"
    "        print(torch._dynamo.utils.compile_times(repr='str', aggregate=True), flush=True)\n"
    "    except Exception as e:\n"
    "        print('compile_times unavailable:', e, flush=True)\n"
    "atexit.register(_times)\n"
    "sys.argv = ['tunelab', *sys.argv[1:]]\n"
    "from tunelab.cli import main\n"
    "main()\n")


def tunelab_row(name: str, a, model: Path, work: Path) -> dict:
    out = work / f"run-{name}"
    shutil.rmtree(out, ignore_errors=True)
    parts = name.split("-")[1:]
    speed = {"mode": "lean" if "lean" in parts else "fast"}
    for part in parts:
        speed.update(SPEED_VARIANTS.get(part, {}))
    cfg = {"model": {"name": str(model)},
           "data": {"train": a.data, "max_length": a.seq, "val_size": 0.0},
           "method": {"name": a.method, "r": 16, "alpha": 32, "dropout": 0.05},
           "train": {"max_steps": a.steps, "batch_size": a.bs, "lr": 2e-4, "log_every": 10, "speed": speed},
           "output_dir": str(out)}
    path = work / f"{name}.json"
    path.write_text(json.dumps(cfg))
    env = dict(os.environ)
    if a.fresh_cache and "warm" not in parts:  # each run compiles as on a fresh machine (its own empty caches)
        cache = work / f"cache-{name}"
        shutil.rmtree(cache, ignore_errors=True)
        env.update(TORCHINDUCTOR_CACHE_DIR=str(cache / "inductor"), TRITON_CACHE_DIR=str(cache / "triton"))
    elif a.fresh_cache:  # "warm": the caches the run before it filled
        cache = work / f"cache-{name.replace('-warm', '')}"
        env.update(TORCHINDUCTOR_CACHE_DIR=str(cache / "inductor"), TRITON_CACHE_DIR=str(cache / "triton"))
    if "nopool" in parts:  # the compiler's workers start with the first compilation (torch's own timing)
        env["TUNELAB_COMPILE_WARMUP"] = "0"
    if "fp32" in parts:  # a CPU with bf16 matrix units, kept in float32 (tunelab.utils.cpu_bf16)
        env["TUNELAB_CPU_BF16"] = "0"
    overrides = ["train.speed.cuda_graphs=true"] if "graphs" in parts else []  # same config file, one switch more
    cmd = [sys.executable, "-c", CLI_WITH_COMPILE_TIMES] if a.compile_times else [sys.executable, "-m", "tunelab"]
    wall, rc, rss = run([*cmd, "train", str(path), *overrides], work / f"{name}.log", a.timeout, env=env)
    row = {"rc": rc, "wall_s": round(wall, 1), "overrides": overrides, "peak_rss_gib": rss}
    if rc == 0:
        s = json.loads((out / "summary.json").read_text())
        mem = [m.get("mem_gib", 0) for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]
        row.update(steady_tok_s=round(s["steady_tokens_per_s"]), first_step_s=s["first_step_s"],
                   peak_gib=rss if a.device == "cpu" else round(max(mem), 2), tokens_seen=s["tokens"],
                   loss_tokens=s["loss_tokens"], train_loss=s["train_loss"], train_s=s["train_s"])
    speed_line = [ln.split("] ", 1)[1] for ln in (work / f"{name}.log").read_text().splitlines()
                  if "] speed:" in ln]
    row["speed_line"] = speed_line[0] if speed_line else None
    row["timeline_s"] = timeline(work / f"{name}.log")
    return row


MARKS = {"loading": "] loading ", "loaded": "trainable of ", "data": "] data:", "step1": "] step 1/", "done": "] done:", "exit": "] exit "}


def timeline(log: Path) -> dict[str, float]:
    """Seconds since launch at which the run's log first showed each phase (imports done and the model loading,
    model loaded, data ready, the first step logged, training done, process exit)."""
    found: dict[str, float] = {}
    for ln in log.read_text().splitlines():
        for key, mark in MARKS.items():
            if key not in found and mark in ln and ln.startswith("["):
                found[key] = float(ln[1:ln.index("s]")])
    return found


def trl_row(name: str, a, model: Path, work: Path) -> dict:
    res = work / f"{name}.result"
    res.unlink(missing_ok=True)
    cmd = [sys.executable, str(HERE / "peer_trl.py"), "--model", str(model), "--data", a.data, "--steps",
           str(a.steps), "--bs", str(a.bs), "--seq", str(a.seq), "--out", str(res)]
    cmd += ["--gc"] if "gc" in name else []
    cmd += ["--liger"] if "liger" in name else []
    cmd += ["--qlora"] if a.method == "qlora" else []
    cmd += ["--cpu"] if a.device == "cpu" else []
    cmd += ["--bf16"] if "bf16" in name else []
    wall, rc, rss = run(cmd, work / f"{name}.log", a.timeout)
    row = {"rc": rc, "wall_s": round(wall, 1), "peak_rss_gib": rss}
    if rc == 0 and res.is_file():
        row.update(json.loads(res.read_text()))
        if a.device == "cpu":
            row["peak_gib"] = rss  # measured as for the tunelab rows
    return row


def peft_row(name: str, a, model: Path, work: Path) -> dict:
    cmd = [sys.executable, a.peer_script, "--shape", a.shape, "--bs", str(a.bs), "--seq", str(a.seq)]
    cmd += ["--gc"] if "gc" in name else []
    _, rc, _ = run(cmd, work / f"{name}.log", a.timeout)
    row = {"rc": rc, "per_step_only": True}
    lines = [ln.split("] ", 1)[1] for ln in (work / f"{name}.log").read_text().splitlines() if "] {" in ln]
    if rc == 0 and lines:
        p = json.loads(lines[-1])
        row.update(steady_tok_s=p["tok_s"], peak_gib=p["peak_gib"], data="random full rows")
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="qwen2.5-1.5b")
    ap.add_argument("--method", default="lora", choices=["lora", "qlora"])
    ap.add_argument("--data", required=True)
    ap.add_argument("--tok", required=True)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--bs", type=int, default=4)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--runs", default="tunelab,trl,trl-gc")
    ap.add_argument("--machine", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--work", default="/tmp/e2e")
    ap.add_argument("--timeout", type=float, default=400)
    ap.add_argument("--peer-script", default="../shared/bench/peer_lora.py")
    ap.add_argument("--fresh-cache", action="store_true",
                    help="give each tunelab run its own empty inductor/Triton caches (a fresh machine's cold "
                    "compile); a run named ...-warm reuses the caches of the same name without -warm")
    ap.add_argument("--config-suffix", default="",
                    help="appended to each row's config, e.g. '@72cf826' for rows of an older checkout run through "
                    "PYTHONPATH")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                    help="cpu: each tool's CPU defaults (see the module doc); peaks are RSS")
    ap.add_argument("--compile-times", action="store_true",
                    help="print torch's compile-time table at the end of each tunelab run's log")
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    model = work / f"model-{a.shape}"
    make_model(a.shape, a.tok, model, a.device)
    import torch

    gpu = torch.cuda.get_device_name() if a.device == "cuda" else f"cpu ({os.cpu_count()} cores)"
    for name in a.runs.split(","):
        tool = "tunelab" if name.startswith("tunelab") else "hf+peft" if name.startswith("hf+peft") else "trl"
        fn = {"tunelab": tunelab_row, "trl": trl_row, "hf+peft": peft_row}[tool]
        config = (name.removeprefix(tool).lstrip("-") or "default") + a.config_suffix
        row = {"bench": "train-e2e", "tool": tool, "config": config, "method": a.method, "shape": a.shape,
               "data": Path(a.data).name, "steps": a.steps, "rows_x_seq": f"{a.bs}x{a.seq}",
               **fn(name, a, model, work), "machine": a.machine, "gpu": gpu,
               "date": time.strftime("%Y-%m-%d")}
        print(json.dumps(row), flush=True)
        with open(a.out, "a") as f:
            f.write(json.dumps(row) + "\n")
        if row.get("rc"):
            print(Path(work / f"{name}.log").read_text()[-3000:], file=sys.stderr, flush=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
