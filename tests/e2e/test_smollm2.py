"""The real bundled model: a few LoRA steps reduce the training loss; the run folder reloads and answers."""

import pytest

import tunelab
from tunelab.data.io import write_records
from tunelab.demo.identity import HELDOUT_QUESTIONS, TRAIN_QUESTIONS_EN, TRAIN_QUESTIONS_ZH, make_identity_dataset


def test_heldout_questions_are_unseen():
    assert not set(HELDOUT_QUESTIONS) & set(TRAIN_QUESTIONS_EN + TRAIN_QUESTIONS_ZH)
    records = make_identity_dataset("Kestrel", "the tunelab project")
    assert all("Kestrel" in r["output"] for r in records)
    assert not {r["instruction"] for r in records} & set(HELDOUT_QUESTIONS)


@pytest.mark.slow
def test_lora_steps_on_smollm2_reduce_loss_and_reload(tmp_path):
    data = tmp_path / "identity.jsonl"
    write_records(data, make_identity_dataset("Kestrel", "the tunelab project", copies=1)[:16])
    run = tunelab.train({"model": {"name": "smollm2-135m"}, "data": {"train": str(data), "val_size": 0, "max_length": 96},
                         "method": {"name": "lora", "r": 8, "alpha": 16, "dropout": 0.0},
                         "train": {"max_steps": 6, "batch_size": 8, "lr": 2e-3, "warmup_ratio": 0.0,
                                   "scheduler": "constant"},
                         "output_dir": str(tmp_path / "run")}, progress=False)
    losses = [m["loss"] for m in run.metrics() if "loss" in m]
    assert len(losses) == 6
    assert losses[-1] < 0.7 * losses[0], losses
    answer = tunelab.Run(run.path).chat("Tell me about yourself.", max_new_tokens=12)
    assert isinstance(answer, str) and answer.strip()
