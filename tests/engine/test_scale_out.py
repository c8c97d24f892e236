"""DDP and FSDP2 on 2 CPU processes (gloo) against single-process training on the same global batch.

One torchrun launch (module fixture) trains every scenario in tests/engine/worker.py; the tests
compare its outputs with in-process references. Invariant: 2 ranks x batch 2 == 1 process x batch 4,
with gradient accumulation, clipping and token-normalized loss (the count all-reduced over ranks).
Tolerance: float32 summation order differs between the two (gloo all-reduce, split batches), so
weights agree to rtol 1e-4 / atol 2e-6 after 4 AdamW steps, not bit for bit.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tunelab.data.pipeline import epoch_order
from tunelab.engine.launch import child_env
from tunelab.engine.loop import fit, micro_batches
from tunelab.engine.recipe import Recipe, Setup
from tunelab.methods import get_method
from tunelab.training.lm_loss import sft_loss

from .common import (
    PER_RANK_BATCH,
    SCENARIOS,
    WORLD,
    make_model,
    make_samples,
    recording_collate,
    train_cfg,
)

WORKER = Path(__file__).with_name("worker.py")
GLOBAL_BATCH = PER_RANK_BATCH * WORLD
RTOL, ATOL = 1e-4, 2e-6


@pytest.fixture(scope="module")
def ranks_out(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("two-ranks")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={WORLD}", str(WORKER),
           str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return out


@pytest.fixture(scope="module")
def samples(tiny_tokenizer) -> list:
    return make_samples(tiny_tokenizer)


def single_process(method_name: str, samples: list, run_dir: Path, **train):
    """The reference: one process, batch_size = the 2-rank global micro-batch."""
    model = make_model(method_name)
    seen: list = []
    result = fit(Setup(model, get_method(method_name), run_dir, torch.device("cpu"), []),
                 Recipe(train=train_cfg(GLOBAL_BATCH, **train), samples=samples, val=[],
                        collate=recording_collate(samples, seen), loss=sft_loss, order=epoch_order), progress=False)
    return model, result, seen


def trained(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_saved(method_name: str, folder: Path) -> dict[str, torch.Tensor]:
    """The weights a run folder holds, loaded the ordinary single-process way into a fresh model."""
    model = make_model(method_name)
    get_method(method_name).load_state(model, folder)
    return trained(model)


def assert_same_weights(got: dict, want: dict, init: dict) -> None:
    assert got.keys() == want.keys() and len(want) >= 4
    moved = max(float((want[k] - init[k]).abs().max()) for k in want)
    assert moved > 1e-4  # training changed the weights, so agreeing means something
    for k, w in want.items():
        torch.testing.assert_close(got[k], w, rtol=RTOL, atol=ATOL, msg=lambda m, k=k: f"{k}: {m}")


def rank_record(ranks_out: Path, name: str, rank: int) -> dict:
    return json.loads((ranks_out / name / f"rank-{rank}.json").read_text())


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_two_ranks_equal_one_process_on_the_global_batch(name, ranks_out, samples, tmp_path):
    _, method_name = SCENARIOS[name]
    init = trained(make_model(method_name))
    reference, result, _ = single_process(method_name, samples, tmp_path / "ref")
    assert_same_weights(load_saved(method_name, ranks_out / name / "final"), trained(reference), init)
    for rank in range(WORLD):  # the logged loss is the global token-normalized mean on every rank
        summary = rank_record(ranks_out, name, rank)["summary"]
        assert summary["steps"] == 4
        assert summary["train_loss"] == pytest.approx(result.summary["train_loss"], rel=1e-5)
        assert summary["tokens"] == result.summary["tokens"]  # all-reduced input tokens, padding excluded


def test_every_rank_sees_its_own_share_of_each_global_micro_batch(ranks_out, samples):
    stream = micro_batches(samples, GLOBAL_BATCH, 7, 0, epoch_order)
    index = {id(s): i for i, s in enumerate(samples)}
    expected = [[index[id(s)] for s in next(stream)[1]] for _ in range(8)]  # 4 steps x 2 micro-batches
    r0, r1 = (rank_record(ranks_out, "ddp-full", r) for r in range(WORLD))
    assert len(r0["seen"]) == len(r1["seen"]) == 8
    padded = 0
    for k, want in enumerate(expected):
        mine0 = [] if r0["pads"][k] else r0["seen"][k]
        mine1 = [] if r1["pads"][k] else r1["seen"][k]
        assert not set(mine0) & set(mine1), f"micro-batch {k}: both ranks got {set(mine0) & set(mine1)}"
        assert sorted(mine0 + mine1) == sorted(want)
        padded += r1["pads"][k]
    assert padded == 2  # 9 samples: the 1-sample micro-batch ending each epoch leaves rank 1 a padding sample
    assert not any(r0["pads"])


@pytest.mark.parametrize("name", ["fsdp-full", "ddp-full"])
def test_resume_a_two_rank_checkpoint_in_one_process(name, ranks_out, samples, tmp_path):
    _, method_name = SCENARIOS[name]
    ckpt = ranks_out / name / "checkpoints" / "step-000002"
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and state["step"] == 2
    assert (ckpt / "dcp").is_dir() == (name == "fsdp-full")  # FSDP state is sharded (DCP), DDP's replicated
    manifest = json.loads((ckpt / "manifest.json").read_text())["files"]  # every rank's files, shards included
    assert {"rng-0.pt", "rng-1.pt", "trainer_state.json"} <= set(manifest)
    assert any(f.startswith("dcp/") for f in manifest) == (name == "fsdp-full")
    from tunelab.engine.checkpoint import verify_checkpoint

    assert verify_checkpoint(ckpt) is None
    resumed, result, seen = single_process(method_name, samples, tmp_path / "resumed", resume=str(ckpt))
    assert result.step == 4 and len(seen) == 4  # only steps 3 and 4 ran
    init = trained(make_model(method_name))
    assert_same_weights(trained(resumed), load_saved(method_name, ranks_out / name / "final"), init)


def test_checkpoint_weights_are_consolidated_hf_folders(ranks_out, samples, tmp_path):
    """weights/ in a 2-rank FSDP checkpoint is the whole model after step 2, loadable without tunelab."""
    single_process("lora", samples, tmp_path / "ref")
    want = load_saved("lora", tmp_path / "ref" / "checkpoints" / "step-000002" / "weights")
    folder = ranks_out / "fsdp-lora" / "checkpoints" / "step-000002" / "weights"
    assert (folder / "adapter_config.json").is_file()
    assert_same_weights(load_saved("lora", folder), want, trained(make_model("lora")))
    final = load_saved("lora", ranks_out / "fsdp-lora" / "final")
    assert any(not torch.allclose(final[k], want[k]) for k in want)  # steps 3-4 moved on from the checkpoint
