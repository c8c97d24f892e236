"""A run folder as `tunelab train` writes it, built by hand for the evidence tests."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

CONFIG = {
    "model": {"name": "tiny-llama", "dtype": "float32"},
    "data": {"train": "data/train.jsonl", "eval": None, "format": "alpaca", "val_size": 0.1, "max_length": 512},
    "method": {"name": "lora", "r": 8},
    "stage": "sft",
    "train": {"epochs": 1, "max_steps": 80, "batch_size": 4, "grad_accum": 1, "lr": 2e-4, "scheduler": "cosine",
              "warmup_ratio": 0.1, "weight_decay": 0.0, "seed": 0, "eval_every": 10},
    "output_dir": "runs",
}
EVAL_LOSSES = [2.0, 1.6, 1.3, 1.2, 1.25, 1.35, 1.5, 1.7]  # overfits after step 40


def metrics_rows(n_steps: int = 80, every: int = 10) -> list[dict]:
    rows = []
    for step in range(1, n_steps + 1):
        lr = 2e-4 * min(1.0, step / 8) * 0.5 * (1 + math.cos(math.pi * step / n_steps))
        rows.append({"step": step, "epoch": step / n_steps, "loss": 2.0 - 1.5 * step / n_steps, "lr": lr,
                     "grad_norm": 1.0, "tokens": 512 * step, "tokens_per_s": 1000.0 + step,
                     "elapsed_s": step * 0.5})
        if step % every == 0:
            e = EVAL_LOSSES[step // every - 1]
            rows.append({"step": step, "eval_loss": e, "eval_ppl": math.exp(e)})
    return rows


def make_run(root: Path, name: str, *, minimal: bool = False, created: str = "2026-11-20T10:00:00+00:00",
             eval_loss: float = 1.7, steps: int = 80) -> Path:
    """Write a run folder; `minimal` keeps only config.yaml + metrics.jsonl."""
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(CONFIG), encoding="utf-8")
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics_rows(steps)), encoding="utf-8")
    if minimal:
        return run
    (run / "run.json").write_text(json.dumps({
        "tunelab_version": "0.1.0", "base_model": "tiny-llama", "method": "lora", "stage": "sft",
        "trainable_params": 1024, "total_params": 3_000_000, "created": created}), encoding="utf-8")
    (run / "summary.json").write_text(json.dumps({
        "steps": steps, "epochs": 1.0, "train_loss": 0.5, "eval_loss": eval_loss, "best_step": 40,
        "best_eval_loss": 1.2, "tokens": 512 * steps, "tokens_per_s": 1040.0, "elapsed_s": 40.0,
        "stopped": "completed"}), encoding="utf-8")
    (run / "eval").mkdir()
    stem = "alpaca_zh-20261120-101500"
    (run / "eval" / f"{stem}.json").write_text(json.dumps({
        "data": "data/test.jsonl", "metrics": {"bleu4": 12.5, "rougeL": 33.25, "exact_match": 10.0},
        "settings": {"max_new_tokens": 64, "temperature": 0.0}, "n": 20}), encoding="utf-8")
    preds = [{"prompt": f"问题 {i}: <b>bold</b> & co", "reference": "答案 <script>alert(1)</script>",
              "prediction": f"prediction {i} \"quoted\""} for i in range(8)]
    (run / "eval" / f"{stem}.predictions.jsonl").write_text(
        "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in preds), encoding="utf-8")
    return run


@pytest.fixture()
def run_dir(tmp_path) -> Path:
    """A complete run folder with an overfitting curve and one eval result."""
    return make_run(tmp_path / "runs", "sft-lora")


@pytest.fixture(name="make_run")
def make_run_fixture():
    """The run-folder builder, for tests that need several or a minimal one."""
    return make_run
