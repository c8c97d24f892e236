"""The reward stage end to end: Bradley-Terry on a scalar head, head saved and reloaded, accuracy on validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import tunelab
from tunelab.data.pipeline import split_train_val
from tunelab.data.stage_formats import load_preference
from tunelab.data.templates import resolve_template
from tunelab.models import load_model, load_tokenizer
from tunelab.run import Run
from tunelab.training.heads import ScoreModel, load_scorer
from tunelab.training.pairs import collate_pairs, pair_samples
from tunelab.stages.reward import bradley_terry_loss

MAX_LEN = 40


def cfg(data: Path, out: Path, steps: int, batch_size: int, val_size: float, lr: float = 1e-3) -> dict:
    return {"model": {"name": "tiny-llama"}, "stage": "reward", "output_dir": str(out),
            "data": {"train": str(data), "max_length": MAX_LEN, "val_size": val_size},
            "method": {"name": "lora", "r": 4, "alpha": 8},
            "train": {"max_steps": steps, "batch_size": batch_size, "lr": lr, "warmup_ratio": 0.0, "report": False}}


def samples(path: Path, val_size: float = 0.0):
    tok = load_tokenizer("tiny-llama")
    train, val = split_train_val(load_preference(path), val_size, 42)
    tpl = resolve_template(tok, None)
    return pair_samples(train, tok, tpl, MAX_LEN), pair_samples(val, tok, tpl, MAX_LEN)


def test_step_one_is_bradley_terry_of_the_base_model_and_the_head_reloads(shared_data: Path, tmp_path: Path) -> None:
    records = json.loads((shared_data / "llamafactory_demo" / "dpo_en_demo.json").read_text(encoding="utf-8"))[:4]
    data = tmp_path / "pairs.json"
    data.write_text(json.dumps(records), encoding="utf-8")
    run = tunelab.train(cfg(data, tmp_path / "rm", steps=2, batch_size=4, val_size=0.0), progress=False)
    lines = [m for m in run.metrics() if "loss" in m]
    # step 1: LoRA B = 0, so the scorer is the base decoder + the seeded head: compute it independently
    train, _ = samples(data)
    batch = collate_pairs(train, 2)
    scorer = ScoreModel(load_model("tiny-llama"), 1, seed=42)
    with torch.no_grad():
        rewards = scorer(batch["input_ids"], batch["attention_mask"]).squeeze(-1)
    expected, metrics = bradley_terry_loss(rewards[:4], rewards[4:])
    assert lines[0]["loss"] == pytest.approx(float(expected), rel=1e-5)
    assert lines[0]["accuracy"] == pytest.approx(float(metrics["accuracy"]))
    # the run holds adapter + head; the head moved from its initialisation
    weights = run.path / "adapter"
    head = load_file(str(weights / "head.safetensors"))["weight"]
    assert head.shape == (1, 64) and not torch.equal(head, scorer.head.weight)
    assert json.loads((weights / "head.json").read_text())["num_labels"] == 1
    info = Run(run.path).info
    assert info["stage"] == "reward" and info["trainable_params"] > 64  # adapters + the 64-weight head
    reloaded = load_scorer(Run(run.path))
    with torch.no_grad():
        again = reloaded(batch["input_ids"], batch["attention_mask"]).squeeze(-1)
    assert not torch.allclose(again, rewards)  # trained, not the initial scorer
    assert torch.equal(reloaded.head.weight, head)


def test_learns_a_separable_preference_and_reports_validation_accuracy(tmp_path: Path) -> None:
    topics = ["the sea", "a cat", "rain", "music", "bread", "trees", "a river", "snow", "stars", "the moon",
              "coffee", "a bridge"]
    rows = [{"prompt": f"Say something about {t}.", "chosen": f"Here is a kind note about {t}.",
             "rejected": "no no no no no no"} for t in topics]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    run = tunelab.train(cfg(data, tmp_path / "rm", steps=12, batch_size=4, val_size=0.25, lr=5e-3), progress=False)
    lines = [m for m in run.metrics() if "loss" in m]
    assert lines[-1]["loss"] < lines[0]["loss"] / 2
    evals = [m for m in run.metrics() if "eval_loss" in m]
    assert evals[-1]["eval_accuracy"] == 1.0 and run.summary["eval_accuracy"] == 1.0
    # the logged validation accuracy is what the reloaded scorer gives
    _, val = samples(data, 0.25)
    batch = collate_pairs(val, 2)
    with torch.no_grad():
        r = load_scorer(Run(run.path))(batch["input_ids"], batch["attention_mask"]).squeeze(-1)
    assert bool((r[:len(val)] > r[len(val):]).all())


def test_resume_restores_the_head_from_the_checkpoint(tmp_path: Path) -> None:
    rows = [{"prompt": f"Topic {i}?", "chosen": f"A fine answer about {i}.", "rejected": "meh"} for i in range(6)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    c = cfg(data, tmp_path / "rm", steps=3, batch_size=2, val_size=0.0, lr=5e-3)
    c["method"]["dropout"] = 0.0
    c["train"]["save_every"] = 2
    run = tunelab.train(c, progress=False)
    straight = [m["loss"] for m in run.metrics() if "loss" in m]
    head = load_file(str(run.path / "adapter" / "head.safetensors"))["weight"]
    ckpt = run.path / "checkpoints" / "step-000002" / "weights"
    assert (ckpt / "head.safetensors").is_file()  # checkpoints carry the head
    (run.path / "summary.json").unlink()  # pretend step 3 never happened, then continue from step 2
    c["train"]["resume"] = "auto"
    resumed = tunelab.train(c, progress=False)
    assert resumed.summary["steps"] == 3
    assert resumed.summary["train_loss"] == pytest.approx(straight[-1], rel=1e-5)  # step 3 redone identically
    torch.testing.assert_close(load_file(str(run.path / "adapter" / "head.safetensors"))["weight"], head)
