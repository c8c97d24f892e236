"""The launcher and the pieces that need no second process: shards, settings, rank-named errors, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import tunelab
from tunelab.config import ConfigError, load_config
from tunelab.config.parallel import ParallelCfg
from tunelab.engine import distributed
from tunelab.engine.launch import child_env, ranked, torchrun_command


def test_shards_are_disjoint_cover_the_batch_and_pad_an_empty_rank():
    batch = list(range(7))
    shards = [distributed.shard(batch, r, 3) for r in range(3)]
    assert [s for s, _ in shards] == [[0, 3, 6], [1, 4], [2, 5]]
    assert sorted(x for s, _ in shards for x in s) == batch
    assert distributed.shard([9], 1, 2) == ([9], True)  # nothing left for rank 1: padding, flagged
    assert distributed.shard([9], 0, 2) == ([9], False)


def test_single_process_is_untouched():
    assert distributed.init(ParallelCfg(strategy="fsdp"), torch.device("cpu")) == torch.device("cpu")
    par = distributed.current()
    assert (par.world_size, par.rank, par.distributed, par.label) == (1, 0, False, "")
    model = torch.nn.Linear(2, 2)
    assert distributed.wrap(model) is model
    assert distributed.all_sum(5) == 5 and distributed.any_rank(0) is False


def test_strategy_none_refuses_several_processes(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match=r"parallel.strategy: none, but the run was launched with 2 processes; "
                                          r"set parallel.strategy=ddp"):
        distributed.init(ParallelCfg(strategy="none"), torch.device("cpu"))


def test_parallel_config_keys_are_checked(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"train": "x.jsonl"}, "parallel": {"strategy": "zero3"}}))
    with pytest.raises(ConfigError, match=r"parallel.strategy"):
        load_config(cfg)
    assert load_config(cfg, ["parallel.strategy=fsdp", "parallel.cpu_offload=true"]).parallel.cpu_offload


def test_errors_name_the_rank_and_children_keep_nvls_off(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert str(ranked(ValueError("bad data"))) == "[rank 1/2] bad data"
    monkeypatch.delenv("NCCL_NVLS_ENABLE", raising=False)
    assert child_env()["NCCL_NVLS_ENABLE"] == "0"
    cmd = torchrun_command(2, ["train", "c.yaml"])
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    assert cmd[-4:] == ["-m", "tunelab", "train", "c.yaml"]


def write_config(tmp_path: Path, output_dir: Path, **extra) -> Path:
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"What is {i} plus {i}?"},
        {"role": "assistant", "content": f"{i} plus {i} is {2 * i}." + " Indeed." * (i % 3)}]}) + "\n"
        for i in range(8)))
    cfg = {"model": {"name": "tiny-llama"}, "data": {"train": str(data), "val_size": 0, "max_length": 64},
           "method": {"name": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
           "train": {"max_steps": 2, "batch_size": 2, "grad_accum": 2, "lr": 1e-3, "warmup_ratio": 0, "seed": 3,
                     "report": False},
           "output_dir": str(output_dir), **extra}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def tunelab_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tunelab", *args], capture_output=True, text=True, env=child_env(),
                          timeout=600, check=False)


def test_cli_nproc_2_writes_one_run_folder_equal_to_one_process(tmp_path):
    out = tmp_path / "ranks"
    cfg = write_config(tmp_path, out)
    proc = tunelab_cli("train", str(cfg), "--nproc", "2", "--quiet")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.strip().splitlines() == [str(out)]  # rank 0 alone reports
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "loss" in x] == [1, 2]  # written once, by rank 0
    assert json.loads((out / "run.json").read_text())["processes"] == 2
    reference = tunelab.train(cfg, ["train.batch_size=4", f"output_dir={tmp_path / 'one'}"], progress=False)
    want = load_file(str(reference.path / "adapter" / "adapter_model.safetensors"))
    got = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert got.keys() == want.keys() and len(want) >= 4
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=2e-6)
    ref_lines = [x for x in reference.metrics() if "loss" in x]
    assert [x["loss"] for x in lines if "loss" in x] == pytest.approx([x["loss"] for x in ref_lines], rel=1e-5)


def test_cli_failure_names_each_rank(tmp_path):
    cfg = write_config(tmp_path, tmp_path / "bad", parallel={"strategy": "none"})
    proc = tunelab_cli("train", str(cfg), "--nproc", "2", "--quiet")
    assert proc.returncode != 0
    for rank in (0, 1):
        assert f"[rank {rank}/2] 1 problem in config" in proc.stderr
    assert "parallel.strategy: none, but the run was launched with 2 processes" in proc.stderr
