"""The training loop's invariants: exact grad accumulation, exact resume, NaN guard, early stopping, signals."""

import os
import signal
from functools import partial
from pathlib import Path

import pytest
import torch

from tunelab.config import LoraCfg, TrainCfg
from tunelab.data.formats import Conversation
from tunelab.data.pipeline import collate, epoch_order
from tunelab.data.templates import resolve_template, tokenize_conversation
from tunelab.engine.loop import TrainingDiverged, TrainingInterrupted, accumulate_gradients, fit
from tunelab.engine.recipe import Recipe, Setup
from tunelab.engine.optim import lr_lambda, param_groups
from tunelab.methods import get_method
from tunelab.models import load_model
from tunelab.training.lm_loss import sft_loss


@pytest.fixture(scope="module")
def samples(tiny_tokenizer):
    tpl = resolve_template(tiny_tokenizer, None)
    out = []
    for i in range(12):
        conv = Conversation([{"role": "user", "content": f"question {i} " + "about things " * (i % 5)},
                             {"role": "assistant", "content": f"answer {i} " + "with detail " * (3 * (i % 4))}])
        out.append(tokenize_conversation(tiny_tokenizer, tpl, conv, 128))
    return out


def lora_model(dropout=0.0, seed=0):
    torch.manual_seed(seed)
    return get_method("lora").apply(load_model("tiny-llama"), LoraCfg(r=4, alpha=8, dropout=dropout))


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_four_micro_batches_equal_one_batch_of_four(samples):
    uneven = [samples[0], samples[3], samples[6], samples[7]]
    assert len({len(s.input_ids) for s in uneven}) == 4
    full = get_method("full")
    nullctx = __import__("contextlib").nullcontext
    m1 = full.apply(load_model("tiny-llama"), None)
    loss1, n1 = accumulate_gradients(m1, [collate(uneven, 2)], sft_loss, nullctx)
    m4 = full.apply(load_model("tiny-llama"), None)
    loss4, n4 = accumulate_gradients(m4, [collate([s], 2) for s in uneven], sft_loss, nullctx)
    assert n1 == n4 == sum(s.n_targets for s in uneven)
    assert loss1 == pytest.approx(loss4, rel=1e-5)
    g1, g4 = grads(m1), grads(m4)
    assert g1.keys() == g4.keys() and len(g1) > 10
    for k in g1:
        torch.testing.assert_close(g4[k], g1[k], rtol=1e-4, atol=1e-6)
    # a per-micro-batch mean (the common bug) would weight short samples up: make sure that differs
    m_bad = full.apply(load_model("tiny-llama"), None)
    for s in uneven:
        loss, n = sft_loss(m_bad, collate([s], 2))
        (loss / n / 4).backward()
    bad = grads(m_bad)
    assert not all(torch.allclose(bad[k], g1[k], rtol=1e-4, atol=1e-6) for k in g1)


def run_fit(model, samples, run_dir, loss_fn=sft_loss, val=(), **train):
    cfg = TrainCfg(**{"max_steps": 10, "batch_size": 2, "grad_accum": 2, "lr": 5e-3, "warmup_ratio": 0.1,
                      "seed": 7, **train})
    return fit(Setup(model, get_method("lora"), run_dir, torch.device("cpu"), []),
               Recipe(train=cfg, samples=samples, val=list(val), collate=partial(collate, pad_id=2), loss=loss_fn,
                      order=epoch_order), progress=False)


def lora_state(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_interrupt_then_resume_equals_uninterrupted(samples, tmp_path):
    straight = lora_model(dropout=0.1)
    res = run_fit(straight, samples, tmp_path / "a")
    assert res.step == 10

    calls = {"n": 0}

    def interrupting_loss(model, batch):
        calls["n"] += 1
        if calls["n"] == 10:  # during step 5 (2 micro-batches a step)
            os.kill(os.getpid(), signal.SIGINT)
        return sft_loss(model, batch)

    first = lora_model(dropout=0.1)
    with pytest.raises(TrainingInterrupted) as e:
        run_fit(first, samples, tmp_path / "b", loss_fn=interrupting_loss)
    assert e.value.checkpoint.name == "step-000005"
    resumed = lora_model(dropout=0.1, seed=123)  # different init: everything must come from the checkpoint
    res2 = run_fit(resumed, samples, tmp_path / "b", resume="auto")
    assert res2.step == 10
    a, b = lora_state(straight), lora_state(resumed)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6)
    assert res2.summary["train_loss"] == pytest.approx(res.summary["train_loss"], rel=1e-5)


@pytest.fixture(scope="module")
def straight_and_interrupted(samples, tmp_path_factory):
    """An uninterrupted 10-step run, and one with checkpoints at steps 2 and 4 that SIGINT stopped at step 5."""
    root = tmp_path_factory.mktemp("verify")
    straight = lora_model(dropout=0.1)
    run_fit(straight, samples, root / "straight")
    calls = {"n": 0}

    def interrupting_loss(model, batch):
        calls["n"] += 1
        if calls["n"] == 10:
            os.kill(os.getpid(), signal.SIGINT)
        return sft_loss(model, batch)

    with pytest.raises(TrainingInterrupted):
        run_fit(lora_model(dropout=0.1), samples, root / "cut", loss_fn=interrupting_loss, save_every=2)
    return lora_state(straight), root / "cut"


def _checkpoint_files(run: Path) -> list[str]:
    latest = run / "checkpoints" / "step-000005"
    return sorted(p.relative_to(latest).as_posix() for p in latest.rglob("*") if p.is_file())


def test_checkpoint_manifest_lists_every_file_with_size_and_hash(straight_and_interrupted):
    import hashlib
    import json

    _, run = straight_and_interrupted
    latest = run / "checkpoints" / "step-000005"
    files = json.loads((latest / "manifest.json").read_text())["files"]
    assert sorted(files) == [f for f in _checkpoint_files(run) if f != "manifest.json"]
    assert {"optimizer.pt", "scheduler.pt", "rng.pt", "trainer_state.json"} <= set(files)
    assert any(f.startswith("weights/") and f.endswith(".safetensors") for f in files)
    for name, want in files.items():
        data = (latest / name).read_bytes()
        assert want == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(samples, straight_and_interrupted, tmp_path,
                                                                    caplog, damage):
    """Each file of the newest checkpoint damaged in turn: resume=auto warns once, naming it, and resumes from
    step 4 to the same weights as the uninterrupted run."""
    import shutil

    expected, cut = straight_and_interrupted
    names = _checkpoint_files(cut)
    if damage == "flip":
        names = [n for n in names if n.endswith((".pt", ".safetensors"))][:2]
    for name in names:
        run = tmp_path / f"{damage}-{name.replace('/', '_')}"
        shutil.copytree(cut, run)
        bad = run / "checkpoints" / "step-000005" / name
        data = bad.read_bytes()
        if damage == "truncate":
            bad.write_bytes(data[:len(data) // 2])
        else:  # same size, one byte changed: only the hash can tell
            bad.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
        caplog.clear()
        resumed = lora_model(dropout=0.1, seed=123)
        with caplog.at_level("WARNING", logger="tunelab.checkpoint"):
            assert run_fit(resumed, samples, run, resume="auto", save_every=2).step == 10
        warnings = [r.getMessage() for r in caplog.records]
        assert len(warnings) == 1 and "step-000005" in warnings[0] and name in warnings[0], warnings
        got = lora_state(resumed)
        for k in expected:
            torch.testing.assert_close(got[k], expected[k], rtol=0, atol=1e-6, msg=f"{damage} {name}: {k}")


def test_temp_folders_of_saves_cut_short_are_removed_by_the_next_save(samples, straight_and_interrupted, tmp_path):
    import shutil

    _, cut = straight_and_interrupted
    shutil.copytree(cut, tmp_path / "r")
    stale = tmp_path / "r" / "checkpoints" / ".step-000006.x1y2z3.tmp"  # what kill -9 mid-save leaves
    (stale / "weights").mkdir(parents=True)
    run_fit(lora_model(dropout=0.1), samples, tmp_path / "r", resume="auto", save_every=2)
    assert sorted(p.name for p in (tmp_path / "r" / "checkpoints").iterdir()) == [
        "step-000005", "step-000006", "step-000008"]


def test_checkpoints_without_manifest_still_resume(samples, straight_and_interrupted, tmp_path):
    import shutil

    expected, cut = straight_and_interrupted
    shutil.copytree(cut, tmp_path / "old")
    for ckpt in (tmp_path / "old" / "checkpoints").iterdir():
        (ckpt / "manifest.json").unlink()
    resumed = lora_model(dropout=0.1, seed=123)
    assert run_fit(resumed, samples, tmp_path / "old", resume="auto").step == 10
    got = lora_state(resumed)
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=0, atol=1e-6)


def test_an_explicitly_chosen_damaged_checkpoint_is_a_clear_error(samples, straight_and_interrupted, tmp_path):
    import shutil

    from tunelab.engine.checkpoint import CheckpointError

    _, cut = straight_and_interrupted
    shutil.copytree(cut, tmp_path / "r")
    latest = tmp_path / "r" / "checkpoints" / "step-000005"
    (latest / "optimizer.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"step-000005 is damaged \(optimizer.pt: 0 bytes, expected"):
        run_fit(lora_model(), samples, tmp_path / "r", resume=str(latest))


def test_a_full_disk_during_a_checkpoint_keeps_the_earlier_ones_and_leaves_no_partial(samples, tmp_path, monkeypatch,
                                                                                       full_disk_at_save):
    from tunelab.utils.io import DiskFullError

    full_disk_at_save(4)  # the 2nd checkpoint's optimizer.pt finds the disk full mid-write
    with pytest.raises(DiskFullError) as e:
        run_fit(lora_model(), samples, tmp_path / "r", save_every=2)
    monkeypatch.undo()
    assert str(e.value) == f"no space left on device at {tmp_path / 'r' / 'checkpoints' / 'step-000004'}"
    assert sorted(p.name for p in (tmp_path / "r" / "checkpoints").iterdir()) == ["step-000002"]  # no temp folder
    from tunelab.engine.checkpoint import verify_checkpoint

    assert verify_checkpoint(tmp_path / "r" / "checkpoints" / "step-000002") is None


def test_nan_loss_stops_with_step_and_checkpoint(samples, tmp_path):
    def nan_loss(model, batch):
        loss, n = sft_loss(model, batch)
        return loss * float("nan"), n

    model = lora_model()
    before = lora_state(model)
    with pytest.raises(TrainingDiverged, match=r"loss became nan at step 1; weights were not updated.*save_every"):
        run_fit(model, samples, tmp_path / "c", loss_fn=nan_loss)
    after = lora_state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_early_stopping_keeps_the_best_weights(samples, tmp_path):
    evals = iter([1.0, 0.5, 0.7, 0.8, 0.9, 0.95])

    def scripted_eval_loss(model, batch):
        if model.training:
            return sft_loss(model, batch)
        loss, n = sft_loss(model, batch)
        return torch.tensor(next(evals) * n), n

    model = lora_model()
    res = run_fit(model, samples[:10], tmp_path / "d", loss_fn=scripted_eval_loss, val=samples[10:11],
                  eval_every=2, early_stopping_patience=2, lr=1e-2)
    assert res.stopped == "early_stopping"
    assert res.summary["best_step"] == 4 and res.step == 8
    assert res.summary["restored_step"] == 4  # the run ends with step 4's weights, and says so
    assert res.summary["best_eval_loss"] == pytest.approx(0.5)
    best = lora_model()
    get_method("lora").load_state(best, tmp_path / "d" / "best")
    a, b = lora_state(model), lora_state(best)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_schedule_and_weight_decay_groups():
    f = lr_lambda("cosine", total_steps=100, warmup_steps=10)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.5) and f(100) == pytest.approx(0.0)
    assert lr_lambda("linear", 100, 0)(50) == pytest.approx(0.5)
    assert lr_lambda("constant", 100, 0)(99) == 1.0
    model = load_model("tiny-llama")
    decay, no_decay = param_groups(model, 0.1)
    assert all(p.dim() >= 2 for p in decay["params"]) and decay["weight_decay"] == 0.1
    norms = [p for n, p in model.named_parameters() if "norm" in n]
    assert norms and all(any(p is q for q in no_decay["params"]) for p in norms)
