"""train.precision: fp16 with dynamic loss scaling (a skipped step on overflow, counted and logged; the scale
halves on overflow and grows after clean steps), checked against a direct computation on CPU; auto's choices."""

from __future__ import annotations

from functools import partial

import pytest
import torch

import tunelab.engine.loop as loop
from tunelab.config import TrainCfg
from tunelab.data.formats import Conversation
from tunelab.data.pipeline import collate, epoch_order
from tunelab.data.templates import resolve_template, tokenize_conversation
from tunelab.engine.precision import Precision, resolve_precision
from tunelab.methods import get_method
from tunelab.models import load_model
from tunelab.training.lm_loss import sft_loss

CPU = torch.device("cpu")


def test_auto_and_explicit_choices_on_cpu() -> None:
    assert resolve_precision("auto", CPU) == "fp32"
    assert [resolve_precision(p, CPU) for p in ("bf16", "fp16", "fp32")] == ["bf16", "fp16", "fp32"]
    with pytest.raises(ValueError, match="train.precision: 'fp8' is not one of auto, bf16, fp16, fp32"):
        resolve_precision("fp8", CPU)
    assert Precision("fp32", CPU).scaler is None and Precision("bf16", CPU).metrics() == {}


def _one_param_step(prec: Precision, grad_value: float, lr: float = 0.1) -> tuple[torch.Tensor, bool]:
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = torch.optim.SGD([w], lr=lr)
    loss = (w * torch.tensor([grad_value, grad_value])).sum()  # d loss / d w = grad_value
    prec.scale(loss).backward()
    assert torch.equal(w.grad, torch.full((2,), grad_value) * prec.scaler.get_scale())  # scaled before unscale
    prec.unscale(opt)
    stepped = prec.step(opt)
    return w.detach(), stepped


def test_fp16_step_equals_the_unscaled_update_and_overflow_skips_it() -> None:
    prec = Precision("fp16", CPU, init_scale=1024.0, growth_interval=2)
    w, stepped = _one_param_step(prec, 0.5)
    assert stepped and torch.allclose(w, torch.tensor([1.0 - 0.1 * 0.5, -2.0 - 0.1 * 0.5]))  # plain SGD's result
    assert prec.metrics() == {"loss_scale": 1024.0, "skipped_steps": 0}
    w, stepped = _one_param_step(prec, float("inf"))  # an overflowing gradient: no update, scale halved
    assert not stepped and torch.equal(w, torch.tensor([1.0, -2.0]))
    assert prec.metrics() == {"loss_scale": 512.0, "skipped_steps": 1}
    for _ in range(2):  # growth_interval clean steps double the scale again
        _one_param_step(prec, 0.5)
    assert prec.metrics() == {"loss_scale": 1024.0, "skipped_steps": 1}
    restored = Precision("fp16", CPU)
    restored.load(prec.state())  # what a checkpoint keeps
    assert restored.metrics() == prec.metrics()


def test_fit_in_fp16_logs_skipped_steps_and_leaves_weights_alone_on_them(tiny_tokenizer, tmp_path, monkeypatch):
    tpl = resolve_template(tiny_tokenizer, None)
    samples = [tokenize_conversation(tiny_tokenizer, tpl, Conversation(
        [{"role": "user", "content": f"q {i}"}, {"role": "assistant", "content": f"a {i} b"}]), 32) for i in range(4)]
    # a first scale of 2**127 overflows float32 at once: the first steps are skipped until the scale is small
    monkeypatch.setattr(loop, "Precision", partial(Precision, init_scale=2.0 ** 127))
    torch.manual_seed(0)
    model = get_method("full").apply(load_model("tiny-llama"), None)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = TrainCfg(max_steps=3, batch_size=2, lr=1e-3, warmup_ratio=0.0, precision="fp16")
    result = fit(model, samples, cfg, tmp_path)
    lines = [m for m in _metrics(tmp_path) if "loss" in m]
    assert [m["skipped_steps"] for m in lines] == [1, 2, 3]
    assert [m["loss_scale"] for m in lines] == [2.0 ** 126, 2.0 ** 125, 2.0 ** 124]
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())  # every step was skipped
    assert result.summary["precision"] == "fp16" and result.summary["skipped_steps"] == 3


def test_fit_in_fp16_trains_close_to_fp32(tiny_tokenizer, tmp_path) -> None:
    tpl = resolve_template(tiny_tokenizer, None)
    samples = [tokenize_conversation(tiny_tokenizer, tpl, Conversation(
        [{"role": "user", "content": f"q {i}"}, {"role": "assistant", "content": f"a {i} b"}]), 32) for i in range(4)]
    losses = {}
    for name in ("fp32", "fp16"):
        torch.manual_seed(0)
        model = get_method("full").apply(load_model("tiny-llama"), None)
        cfg = TrainCfg(max_steps=2, batch_size=2, lr=1e-3, warmup_ratio=0.0, precision=name)
        fit(model, samples, cfg, tmp_path / name)
        losses[name] = [m["loss"] for m in _metrics(tmp_path / name) if "loss" in m]
    assert losses["fp16"] == pytest.approx(losses["fp32"], rel=2e-2)  # fp16 autocast: ~3 significant digits
    assert all("skipped_steps" in m for m in _metrics(tmp_path / "fp16") if "loss" in m)


def fit(model, samples, cfg, run_dir):
    from tunelab.tracking import make_tracker

    run_dir.mkdir(parents=True, exist_ok=True)
    tracker = make_tracker("jsonl")
    tracker.start(run_dir, {})
    result = loop.fit(loop.Setup(model=model, method=get_method("full"), run_dir=run_dir, device=CPU, trackers=[tracker]),
                      loop.Recipe(train=cfg, samples=samples, collate=partial(collate, pad_id=0), loss=sft_loss,
                                  order=epoch_order), progress=False)
    tracker.finish()
    return result


def _metrics(run_dir):
    import json

    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
