"""`auto` precision on a CPU: bfloat16 where the CPU multiplies it natively, float32 elsewhere, TUNELAB_CPU_BF16
overriding the detection and explicit config values overriding both; a run trained that way reloads and chats."""

from __future__ import annotations

import json

import pytest
import torch

from tunelab.engine.precision import resolve_precision
from tunelab.estimate import _weight_dtype
from tunelab.models import pick_dtype
from tunelab.utils import cpu_bf16 as cpu_bf16_mod
from tunelab.utils.cpu_bf16 import ENV, cpu_bf16

CPU = torch.device("cpu")


@pytest.mark.parametrize("native", [True, False])
def test_auto_follows_the_cpu_and_explicit_values_win(monkeypatch, native):
    monkeypatch.setenv(ENV, "auto")
    monkeypatch.setattr(cpu_bf16_mod, "native_bf16_matmul", lambda: native)
    want = torch.bfloat16 if native else torch.float32
    assert cpu_bf16() is native
    assert pick_dtype("auto", CPU) == want
    assert resolve_precision("auto", CPU) == ("bf16" if native else "fp32")
    from tunelab.config import RunCfg

    cfg = RunCfg.model_validate({"data": {"train": "x.json"}})
    assert _weight_dtype(cfg, "cpu") == str(want).removeprefix("torch.")
    assert pick_dtype("float32", CPU) == torch.float32 and pick_dtype("bfloat16", CPU) == torch.bfloat16
    assert resolve_precision("fp32", CPU) == "fp32" and resolve_precision("bf16", CPU) == "bf16"


@pytest.mark.parametrize(("value", "want"), [("0", False), ("off", False), ("1", True), ("true", True)])
def test_the_environment_overrides_the_detection(monkeypatch, value, want):
    monkeypatch.setattr(cpu_bf16_mod, "native_bf16_matmul", lambda: not want)
    monkeypatch.setenv(ENV, value)
    assert cpu_bf16() is want and resolve_precision("auto", CPU) == ("bf16" if want else "fp32")


def test_a_bad_value_names_the_variable_and_the_choices(monkeypatch):
    monkeypatch.setenv(ENV, "maybe")
    with pytest.raises(ValueError, match=r"TUNELAB_CPU_BF16='maybe': use 1 .*, 0 \(float32\) or auto"):
        cpu_bf16()


def test_detection_answers_on_this_machine():
    assert isinstance(cpu_bf16_mod.native_bf16_matmul(), bool)


def test_a_bf16_cpu_run_trains_reloads_and_chats(tmp_path, addition_file, monkeypatch):
    """The default on a bf16 CPU, end to end: bf16 weights under bf16 autocast with fused LoRA and the chunked
    loss; the header says so, the loss falls, and the saved adapter reloads onto the base and generates."""
    import tunelab

    monkeypatch.setenv(ENV, "1")
    cfg = {"model": {"name": "tiny-llama"}, "data": {"train": str(addition_file), "val_size": 0.0},
           "method": {"name": "lora", "r": 8, "alpha": 16, "dropout": 0.05},
           "train": {"epochs": 3, "batch_size": 4, "lr": 3e-3, "log_every": 1}, "output_dir": str(tmp_path / "run")}
    run = tunelab.train(cfg, progress=False)
    assert run.info["dtype"] == "bfloat16"
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in line]
    assert len(losses) >= 6 and all(map(torch.isfinite, torch.tensor(losses)))
    assert sum(losses[-3:]) < sum(losses[:3])
    reply = tunelab.Run(tmp_path / "run").chat("What is 1 plus 2?", max_new_tokens=4)
    assert isinstance(reply, str)


def test_trainable_weights_get_float32_storage_frozen_ones_stay_bf16():
    from tunelab.utils.cpu_bf16 import keep_trainable_fp32

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)).bfloat16()
    model[0].requires_grad_(False)
    before = model[1].weight.detach().clone()
    assert keep_trainable_fp32(model) == 2
    assert model[0].weight.dtype == torch.bfloat16 and model[1].weight.dtype == torch.float32
    assert torch.equal(model[1].weight.to(torch.bfloat16), before)  # the same values, wider storage
    assert keep_trainable_fp32(model) == 0


def test_a_bf16_cpu_freeze_run_keeps_float32_master_weights(tmp_path, addition_file, monkeypatch):
    """Auto bf16 on a CPU with trained base weights (freeze: the top layer and the head): those weights are
    stored and updated in float32 under bf16 autocast, the rest stays bf16; the run trains and reloads."""
    import tunelab

    monkeypatch.setenv(ENV, "1")
    cfg = {"model": {"name": "tiny-llama"}, "data": {"train": str(addition_file), "val_size": 0.0},
           "method": {"name": "freeze", "layers": 1},
           "train": {"epochs": 2, "batch_size": 4, "lr": 1e-3, "log_every": 1}, "output_dir": str(tmp_path / "run")}
    run = tunelab.train(cfg, progress=False)
    assert run.info["dtype"] == "bfloat16, trained weights float32"
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in line]
    assert all(map(torch.isfinite, torch.tensor(losses))) and losses[-1] < losses[0]
    assert isinstance(tunelab.Run(tmp_path / "run").chat("What is 1 plus 2?", max_new_tokens=4), str)
