"""`tunelab bench`: training-step throughput and memory on random-weight models of real shapes.

Mount with `app.add_typer(bench.app, name="bench")`.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Benchmark a LoRA / full fine-tuning step (tokens/s, peak GiB, MFU); "
                       "compare with HF+PEFT in the same run.", add_completion=False)


def _print_table(rows: list[dict], peers: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("config", "tok/s", "peak GiB", "MFU", "vs peer", "note")
    base = next((p for p in peers if "tok_s" in p and not p.get("gc") and not p.get("liger")), None)
    for r in peers:
        name = "hf+peft" + ("+liger" if r.get("liger") else "") + ("+gc" if r.get("gc") else "")
        table.add_row(f"{name} ({r.get('mode', '?')})", str(r.get("tok_s", "-")), str(r.get("peak_gib", "-")),
                      str(r.get("mfu", "-")), "", (r.get("error") or "")[-80:])
    for r in rows:
        ratio = f"{r['tok_s'] / base['tok_s']:.2f}x" if base and "tok_s" in r else ""
        table.add_row(f"tunelab {r.get('name', '')} ({r.get('method')})", str(r.get("tok_s", "-")),
                      str(r.get("peak_gib", "-")), str(r.get("mfu", "-")), ratio, (r.get("error") or "")[-80:])
    Console(width=160).print(table)


@app.callback(invoke_without_command=True)
def bench(
    shape: str = typer.Option("qwen2.5-1.5b",
                              help="Model shape: tiny, qwen2.5-0.5b, qwen2.5-1.5b, qwen2.5-7b, llama3-8b."),
    batch: int = typer.Option(4, help="Sequences per step."),
    seq: int = typer.Option(2048, help="Tokens per sequence."),
    method: str = typer.Option("lora", help="lora (r16 all-linear), qlora (NF4 base + LoRA; needs bitsandbytes) "
                                            "or full."),
    rank: int = typer.Option(16, help="LoRA rank (alpha = 2 * rank)."),
    chunked_ce: bool = typer.Option(True, help="Chunked linear + cross-entropy (no full logits)."),
    fused_lora: bool = typer.Option(True, help="Fused LoRA linear forward/backward."),
    compile: bool = typer.Option(True, "--compile/--no-compile", help="torch.compile each decoder layer."),
    fused_adamw: bool = typer.Option(True, help="Fused AdamW (CUDA)."),
    grad_ckpt: bool = typer.Option(False, help="Activation checkpointing per decoder layer (memory-lean)."),
    ckpt_every: int = typer.Option(1, help="With --grad-ckpt: checkpoint every n-th layer only (1: all)."),
    packing: bool = typer.Option(False, help="Packed rows of random-length samples with document-masked attention."),
    act_budget: float = typer.Option(1.0, help="With --compile: fraction of activations kept (<1 recomputes more)."),
    ce_chunk: int = typer.Option(0, help="Tokens per cross-entropy chunk (0: auto)."),
    ce_backend: str = typer.Option("torch", help="Chunked-CE backend: torch, liger or auto."),
    compile_mode: str = typer.Option("", help="With --compile: torch.compile mode, e.g. max-autotune-no-cudagraphs "
                                              "(Triton GEMM autotuning; long warmup) or reduce-overhead (CUDA graphs). Empty: default."),
    lengths: Annotated[Path | None, typer.Option(
        help="Real data: a sample-lengths file (benchmarks/scripts/data_lengths.py). One pass over it is timed and "
             "tok/s counts real tokens; with --packing samples are packed into rows of --seq, else --batch "
             "samples per step padded to the longest.")] = None,
    steps: int = typer.Option(10, help="Timed steps."),
    warmup: int = typer.Option(3, help="Untimed steps first (compilation happens here)."),
    sweep: str = typer.Option("", help="Comma list of named configurations (or 'all'), each in its own "
                                       "process: fast, lean, no-compile, no-chunked-ce, no-fused-lora, plain, "
                                       "lean-eager, ckpt4, liger-ce, packed, budget, full-ckpt, full, full-ckpt2, full-ckpt4, fast-autotune, fast-graphs, "
                                       "qlora-lean, qlora-lean-compiled, long (batch 1, checkpointed, eager)."),
    peer: bool = typer.Option(False, help="Also run the HF+PEFT peer (same shape/batch/seq) and print the ratio."),
    peer_gc: bool = typer.Option(False, help="With --peer: also run the peer with gradient checkpointing."),
    peer_liger: bool = typer.Option(False, help="With --peer: also run the peer's Liger configurations."),
    peer_script: Annotated[Path | None, typer.Option(
        help="Path of peer_lora.py (default: ../shared/bench/peer_lora.py).")] = None,
    results_dir: Annotated[Path, typer.Option(help="Folder for <date>-<device>.jsonl.")] = Path("benchmarks/results"),
    isolate: bool = typer.Option(False, help="Run a single configuration in a child process too."),
    profile_dir: Annotated[Path | None, typer.Option(
        help="Write a torch.profiler kernel table per configuration here.")] = None,
) -> None:
    """Measure training steps; append rows to RESULTS_DIR/<date>-<device>.jsonl and print a table."""
    from tunelab.bench.results import append_rows, environment
    from tunelab.bench.runner import SWEEP, find_peer_script, run_isolated, run_peer
    from tunelab.bench.step import BenchCfg, measure

    base = BenchCfg(shape=shape, batch=batch, seq=seq, method=method, rank=rank, chunked_ce=chunked_ce,
                    fused_lora=fused_lora, compile=compile, fused_adamw=fused_adamw, grad_ckpt=grad_ckpt,
                    ckpt_every=ckpt_every, packing=packing, act_budget=act_budget, steps=steps, warmup=warmup,
                    ce_chunk=ce_chunk or None, ce_backend=ce_backend, compile_mode=compile_mode or None,
                    lengths=str(lengths) if lengths else None, profile_dir=str(profile_dir) if profile_dir else None)
    names = [n.strip() for n in sweep.split(",") if n.strip()] if sweep else []
    if names == ["all"]:
        names = list(SWEEP)
    unknown = [n for n in names if n not in SWEEP]
    if unknown:
        raise typer.BadParameter(f"unknown sweep name(s) {unknown}; choose from {', '.join(SWEEP)} or 'all'",
                                 param_hint="--sweep")
    try:
        base.validate()
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    script = find_peer_script(peer_script) if peer else None  # fail before spending GPU time
    env = environment()
    rows: list[dict] = []
    path = None

    def keep(row: dict) -> dict:  # append as we go: a later crash or timeout loses nothing measured
        nonlocal path
        path = append_rows(results_dir, [row])
        typer.echo(json.dumps(row))
        return row

    if names:
        for name in names:
            cfg = replace(base, extra={"name": name}, **SWEEP[name])
            rows.append(keep(run_isolated(cfg) | env | {"name": name}))
    else:
        cfg = replace(base, extra={"name": "custom"})
        rows.append(keep((run_isolated(cfg) if isolate else measure(cfg)) | env))
    peers: list[dict] = []
    if script is not None:
        combos = [(False, False)] + ([(True, False)] if peer_gc else []) + \
                 ([(False, True), (True, True)] if peer_liger else [])
        for gc, liger in combos:
            peers.append(keep(run_peer(script, shape, batch, seq, method, gc, liger, steps, warmup) | env))
    _print_table(rows, peers)
    typer.echo(f"rows appended to {path}")
