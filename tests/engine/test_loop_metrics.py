"""The loop reports numbers that mean what they say: eval_ppl only for a per-token cross-entropy, throughput over
training time only (evaluation excluded) and over real tokens (padding excluded), progress during evaluation."""

from __future__ import annotations

import json
from functools import partial

import pytest
import torch

import tunelab.engine.loop as loop
from tunelab.config import TrainCfg
from tunelab.data.formats import Conversation
from tunelab.data.pipeline import collate, epoch_order
from tunelab.data.templates import resolve_template, tokenize_conversation
from tunelab.engine.loop import LOSS_COUNT_KEY, eval_log_line, fit, has_perplexity
from tunelab.methods import get_method
from tunelab.models import load_model
from tunelab.training.lm_loss import sft_loss


@pytest.fixture(scope="module")
def samples(tiny_tokenizer):
    tpl = resolve_template(tiny_tokenizer, None)
    return [tokenize_conversation(tiny_tokenizer, tpl, Conversation(
        [{"role": "user", "content": "q " * (1 + i)}, {"role": "assistant", "content": "a " * (1 + 2 * i)}]), 64)
        for i in range(6)]


def test_eval_line_has_perplexity_only_when_asked() -> None:
    assert eval_log_line(0.693, {"a": 1.0}, {"accuracy": 0.5}) == pytest.approx(
        {"eval_loss": 0.693, "eval_ppl": 2.0, "eval_loss/a": 1.0, "eval_ppl/a": 2.71828, "eval_accuracy": 0.5},
        rel=1e-3)
    assert eval_log_line(0.693, {"a": 1.0}, {"accuracy": 0.5}, perplexity=False) == {
        "eval_loss": 0.693, "eval_loss/a": 1.0, "eval_accuracy": 0.5}


def test_perplexity_follows_how_the_loss_is_counted(samples) -> None:
    tokens = partial(collate, pad_id=0)
    pairs = lambda xs: {**collate(xs, 0), LOSS_COUNT_KEY: len(xs)}  # noqa: E731 - a DPO-like collator
    assert has_perplexity(sft_loss, tokens, samples)
    assert not has_perplexity(sft_loss, pairs, samples)
    distill_like = partial(sft_loss)
    distill_like.perplexity = False
    assert not has_perplexity(distill_like, tokens, samples)


class Clock:
    """A fake perf_counter: every training forward takes 1 s, every evaluation batch 100 s."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_throughput_excludes_evaluation_and_padding(samples, tmp_path, monkeypatch) -> None:
    clock = Clock()
    monkeypatch.setattr(loop.time, "perf_counter", clock)

    def timed_loss(model, batch):
        clock.now += 1.0 if model.training else 100.0
        return sft_loss(model, batch)

    ticks = []
    real = loop.TrainProgress.eval_progress

    def spy(self, step):
        tick = real(self, step)
        return lambda done, total: (ticks.append((step, done, total)), tick(done, total))

    monkeypatch.setattr(loop.TrainProgress, "eval_progress", spy)
    torch.manual_seed(0)
    model = get_method("full").apply(load_model("tiny-llama"), None)
    cfg = TrainCfg(max_steps=4, batch_size=2, eval_every=2, lr=1e-3, warmup_ratio=0.0)
    result = fit(loop.Setup(model=model, method=get_method("full"), run_dir=tmp_path, device=torch.device("cpu"),
                            trackers=[]),
                 loop.Recipe(train=cfg, samples=samples[:4], val=samples[4:], collate=partial(collate, pad_id=0),
                             loss=timed_loss, order=epoch_order), progress=True)
    s = result.summary
    # 4 training steps of 1 s; 2 evaluations of 1 batch (2 samples, batch 2) at 100 s each
    assert s["train_s"] == pytest.approx(4.0) and s["eval_s"] == pytest.approx(200.0)
    order = [epoch_order(4, cfg.seed, e) for e in range(2)]
    real_tokens = sum(len(samples[i].input_ids) for o in order for i in o)  # every sample's tokens, no padding
    padded = sum(2 * max(len(samples[o[j]].input_ids), len(samples[o[j + 1]].input_ids)) for o in order
                 for j in (0, 2))
    assert real_tokens < padded  # the batches were padded: the count below is of real tokens only
    assert s["tokens"] == real_tokens
    assert s["tokens_per_s"] == pytest.approx(real_tokens / 4.0)
    assert ticks == [(2, 1, 1), (4, 1, 1)]  # the evaluation showed its progress


def test_a_preference_run_logs_no_perplexity(tmp_path) -> None:
    import tunelab

    rows = [{"prompt": f"Say {i}.", "chosen": f"{i}", "rejected": f"not {i}"} for i in range(6)]
    (tmp_path / "p.json").write_text(json.dumps(rows), encoding="utf-8")
    run = tunelab.train({"model": {"name": "tiny-llama"}, "stage": "dpo", "output_dir": str(tmp_path / "r"),
                         "data": {"train": str(tmp_path / "p.json"), "max_length": 32, "val_size": 0.34},
                         "method": {"name": "lora", "r": 2, "alpha": 4},
                         "train": {"max_steps": 1, "batch_size": 2, "report": False}}, progress=False)
    evals = [m for m in run.metrics() if "eval_loss" in m]
    assert evals and not any(k.startswith("eval_ppl") for m in evals for k in m)
