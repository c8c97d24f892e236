"""The benchmark's accounting (FLOPs convention, result files) and one tiny CPU step through the CLI."""

from __future__ import annotations

import json
import math

import pytest
import typer
from typer.testing import CliRunner

from tunelab.bench.flops import flops_per_token, mfu
from tunelab.bench.results import append_rows, results_path
from tunelab.bench.shapes import build_config
from tunelab.bench.step import BenchCfg
from tunelab.cli import bench


def test_flops_match_peer_convention_by_hand():
    # qwen2.5-1.5b-like numbers: N = 1.5e9, L = 28, h = 1536, S = 2048
    fwd = 2 * 1.5e9 + 4 * 28 * 2048 * 1536
    assert flops_per_token(int(1.5e9), 28, 1536, 2048, "lora", False) == 2 * fwd
    assert flops_per_token(int(1.5e9), 28, 1536, 2048, "lora", True) == 3 * fwd
    assert flops_per_token(int(1.5e9), 28, 1536, 2048, "full", True) == 4 * fwd
    assert flops_per_token(int(1.5e9), 28, 1536, 2048, "lora", 0.25) == 2.25 * fwd
    assert mfu(1000.0, 1e12, peak=1.0) == 1000.0
    assert flops_per_token(int(1.5e9), 28, 1536, 2048, "qlora", False) == 2 * fwd
    with pytest.raises(ValueError, match="unknown method 'dpo'"):
        flops_per_token(1, 1, 1, 1, "dpo", False)


def test_shapes_and_validation_errors():
    cfg = build_config("llama3-8b")
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.vocab_size) == (4096, 32, 8, 128256)
    with pytest.raises(ValueError, match="unknown shape 'gpt5'"):
        build_config("gpt5")
    with pytest.raises(ValueError, match=r"(?s)method: 'dpo'.*batch: must be > 0.*ce_backend: 'cuda'.*shape: 'gpt5'"):
        BenchCfg(method="dpo", batch=0, ce_backend="cuda", shape="gpt5").validate()


def test_packed_lengths_fill_rows_exactly():
    import torch

    from tunelab.bench.step import packed_lengths

    rows = packed_lengths(3, 2048, torch.Generator().manual_seed(0))
    assert [sum(r) for r in rows] == [2048] * 3
    assert all(1 <= n <= 1024 for r in rows for n in r) and all(len(r) >= 2 for r in rows)
    assert [sum(r) for r in packed_lengths(2, 5, torch.Generator().manual_seed(0))] == [5, 5]


def test_results_append_and_reload(tmp_path):
    row = {"device": "NVIDIA H100 80GB HBM3", "date": "2026-11-25T10:00:00Z", "tok_s": 1}
    assert results_path(tmp_path, row["device"], row["date"]).name == "2026-11-25-nvidia-h100-80gb-hbm3.jsonl"
    append_rows(tmp_path, [row])
    path = append_rows(tmp_path, [row | {"tok_s": 2}])
    assert [json.loads(l)["tok_s"] for l in path.read_text().splitlines()] == [1, 2]


def _app():
    app = typer.Typer()
    app.add_typer(bench.app, name="bench")
    return app


def test_cli_tiny_step_on_cpu(tmp_path):
    res = CliRunner().invoke(_app(), ["bench", "--shape", "tiny", "--batch", "2", "--seq", "32", "--steps", "1",
                                      "--warmup", "1", "--no-compile", "--packing", "--results-dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    (path,) = tmp_path.glob("*.jsonl")
    row = json.loads(path.read_text().splitlines()[-1])
    assert row["tool"] == "tunelab" and row["shape"] == "tiny" and row["packing"] is True
    assert row["tok_s"] > 0 and row["peft"] and row["transformers"]
    # random init, vocab 1024: the first loss is near ln(1024)
    assert abs(row["loss_first"] - math.log(1024)) < 0.5


def test_cli_rejects_unknown_sweep_and_missing_peer(tmp_path):
    res = CliRunner().invoke(_app(), ["bench", "--shape", "tiny", "--sweep", "fast,turbo"])
    assert res.exit_code != 0 and "unknown sweep name(s) ['turbo']" in res.output
    res = CliRunner().invoke(_app(), ["bench", "--shape", "tiny", "--peer", "--peer-script", str(tmp_path / "x.py")])
    assert res.exit_code != 0 and "peer script not found" in str(res.exception)


def test_real_data_lengths_packed_and_padded_count_real_tokens_only(tmp_path):
    from tunelab.bench.step import data_batches, measure

    lengths = [30, 50, 20, 64, 10, 40, 33, 70]           # 70 > seq: truncated to 64 like the pipeline does
    path = tmp_path / "l.json"
    path.write_text(json.dumps({"lengths": lengths}))
    real = sum(min(n, 64) for n in lengths)
    padded = BenchCfg(shape="tiny", batch=3, seq=64, compile=False, fused_adamw=False, lengths=str(path), warmup=1)
    plan = data_batches(padded)
    assert sorted(r[0] for b in plan for r in b) == sorted(min(n, 64) for n in lengths)
    assert [len(b) for b in plan] == [3, 3, 2]
    row = measure(padded, "cpu")
    widths = [max(r[0] for r in b) * len(b) for b in plan]
    assert row["real_tokens"] == real and row["timed_steps"] == 3
    assert row["fill"] == round(real / sum(widths), 3)

    packed = BenchCfg(shape="tiny", batch=2, seq=64, compile=False, fused_adamw=False, lengths=str(path),
                      packing=True, warmup=1)
    plan = data_batches(packed)
    assert all(len(b) == 2 and all(sum(r) <= 64 for r in b) for b in plan)
    row = measure(packed, "cpu")
    kept = sum(sum(r) for b in plan for r in b)
    assert row["real_tokens"] == kept and row["fill"] == round(kept / (64 * 2 * len(plan)), 3)
    with pytest.raises(ValueError, match="lengths without packing gives a new shape every step"):
        BenchCfg(shape="tiny", lengths=str(path)).validate()
    path.write_text(json.dumps({"lengths": [3, "x"]}))
    with pytest.raises(ValueError, match="expected a list of sample lengths"):
        measure(padded, "cpu")
