"""A run folder written by an earlier tunelab still loads: tests/fixtures/run_v0 was trained (tiny-llama,
LoRA r4, 3 steps, one checkpoint) by the release before the run-folder module existed, and
run_v0.expected.json holds what that release computed from it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tunelab.run import Run

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture()
def old_run(tmp_path) -> Run:
    shutil.copytree(FIXTURES / "run_v0", tmp_path / "run_v0")
    return Run(tmp_path / "run_v0")


def test_old_run_reloads_with_the_same_logits(old_run):
    expected = json.loads((FIXTURES / "run_v0.expected.json").read_text())
    assert old_run.base_model_name == expected["base"] and old_run.summary["steps"] == expected["steps"]
    model, tok, _ = old_run.load_model(device="cpu")
    ids = tok(expected["prompt"], return_tensors="pt").input_ids
    assert ids[0].tolist() == expected["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, -1]
    top = torch.topk(logits, 5)
    assert top.indices.tolist() == expected["top_ids"]
    assert top.values.tolist() == pytest.approx(expected["top_logits"], abs=1e-4)


def test_old_run_config_metrics_and_checkpoint_read_back(old_run):
    assert old_run.config.method.name == "lora" and old_run.config.method.r == 4
    assert [m["step"] for m in old_run.metrics() if "loss" in m] == [1, 2, 3]
    ckpts = sorted((old_run.path / "checkpoints").iterdir())
    assert [c.name for c in ckpts] == ["step-000002"]
    assert json.loads((ckpts[0] / "trainer_state.json").read_text())["step"] == 2
