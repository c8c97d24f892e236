"""The distill stage end to end: teacher logits on the student's tokens, the loss as distill_loss computes it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import tunelab
from tunelab.data.pipeline import collate, prepare_data
from tunelab.data.templates import resolve_template
from tunelab.models import load_model, load_tokenizer
from tunelab.stages.distill import check_vocabularies, distill_loss


@pytest.fixture()
def sft_file(tmp_path: Path) -> Path:
    rows = [{"instruction": f"Count to {i}.", "output": " ".join(str(k) for k in range(1, i + 2))} for i in range(4)]
    path = tmp_path / "sft.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def cfg(data: Path, out: Path, teacher: str, **distill) -> dict:
    return {"model": {"name": "tiny-llama"}, "stage": "distill", "output_dir": str(out),
            "data": {"train": str(data), "max_length": 48, "val_size": 0.0},
            "method": {"name": "lora", "r": 4, "alpha": 8}, "distill": {"teacher": teacher, **distill},
            "train": {"max_steps": 2, "batch_size": 4, "lr": 1e-2, "warmup_ratio": 0.0, "report": False}}


def test_step_one_is_distill_loss_of_the_base_student_and_the_teacher(sft_file: Path, tmp_path: Path) -> None:
    run = tunelab.train(cfg(sft_file, tmp_path / "d", "tiny-qwen2", divergence="jsd", alpha=0.7), progress=False)
    lines = [m for m in run.metrics() if "loss" in m]
    tok = load_tokenizer("tiny-llama")
    data = prepare_data(run.config.data, tok, resolve_template(tok, None), 42)
    batch = collate(data.train, tok.pad_token_id)
    with torch.no_grad():
        student = load_model("tiny-llama")(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        teacher = load_model("tiny-qwen2")(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    expected, metrics = distill_loss(student, teacher, batch["labels"], temperature=2.0, alpha=0.7, divergence="jsd")
    assert lines[0]["loss"] == pytest.approx(float(expected), rel=1e-5)
    assert lines[0]["divergence"] == pytest.approx(float(metrics["divergence"]), rel=1e-4)
    assert lines[1]["divergence"] != lines[0]["divergence"] and run.summary["data"]["teacher"] == "tiny-qwen2"


def test_a_student_equal_to_its_teacher_starts_at_zero_divergence(sft_file: Path, tmp_path: Path) -> None:
    run = tunelab.train(cfg(sft_file, tmp_path / "same", "tiny-llama", alpha=1.0), progress=False)
    first = run.metrics()[0]
    assert first["divergence"] == pytest.approx(0.0, abs=1e-6) and first["loss"] == pytest.approx(0.0, abs=1e-5)


def test_different_vocabularies_are_refused() -> None:
    student, teacher = load_model("tiny-llama"), load_model("tiny-llama")
    teacher.resize_token_embeddings(1000)
    with pytest.raises(ValueError, match="has 1000 output tokens but the student has 49152"):
        check_vocabularies(student, teacher, "small-vocab")


def test_the_stage_needs_a_teacher(sft_file: Path, tmp_path: Path) -> None:
    bad = cfg(sft_file, tmp_path / "x", "tiny-qwen2")
    del bad["distill"]
    with pytest.raises(ValueError, match="stage distill needs a distill: section with a teacher"):
        tunelab.train(bad, progress=False)
