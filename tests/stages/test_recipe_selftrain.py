"""The selftrain stage end to end: sample, judge with a reward file, keep the best, SFT on the kept answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import tunelab
from tunelab.data.formats import Conversation
from tunelab.data.io import DataError
from tunelab.data.pipeline import collate
from tunelab.data.templates import resolve_template, tokenize_conversation
from tunelab.models import load_model, load_tokenizer
from tunelab.stages.selftrain import select

REWARDS_PY = '''
def vowels(completions, answers, prompts):
    out = []
    for c in completions:
        letters = [ch for ch in c.lower() if ch.isalpha()]
        out.append(sum(ch in "aeiou" for ch in letters) / max(len(letters), 1))
    return out
'''


def cfg(data: Path, out: Path, min_reward: float) -> dict:
    return {"model": {"name": "tiny-llama"}, "stage": "selftrain", "output_dir": str(out),
            "data": {"train": str(data), "max_length": 64, "val_size": 0.0},
            "method": {"name": "lora", "r": 4, "alpha": 8},
            "selftrain": {"samples_per_prompt": 3, "max_new_tokens": 8, "rewards": ["my_rewards.py:vowels"],
                          "min_reward": min_reward},
            "train": {"max_steps": 2, "batch_size": 4, "lr": 1e-2, "warmup_ratio": 0.0, "report": False}}


@pytest.fixture()
def prompts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "my_rewards.py").write_text(REWARDS_PY, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    rows = [{"instruction": f"Describe thing {i}.", "output": f"Thing {i} is fine."} for i in range(4)]
    path = tmp_path / "q.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def test_keeps_the_best_sample_per_prompt_and_trains_on_it(prompts: Path, tmp_path: Path) -> None:
    run = tunelab.train(cfg(prompts, tmp_path / "st", min_reward=0.0), progress=False)
    rows = [json.loads(line) for line in (run.path / "selftrain_samples.jsonl").read_text().splitlines()]
    assert len(rows) == 12
    for p in range(4):  # the kept one of each prompt's 3 samples has the highest reward
        group = rows[3 * p:3 * p + 3]
        kept = [r for r in group if r["kept"]]
        assert len(kept) == 1 and kept[0]["reward"] == max(r["reward"] for r in group)
    data = [json.loads(line) for line in (run.path / "selftrain_data.jsonl").read_text().splitlines()]
    assert [d["messages"][-1]["content"] for d in data] == [r["completion"] for r in rows if r["kept"]]
    # step 1 (LoRA B = 0) is the base model's SFT loss on exactly the kept conversations
    tok = load_tokenizer("tiny-llama")
    tpl = resolve_template(tok, None)
    batch = collate([tokenize_conversation(tok, tpl, Conversation(d["messages"]), 64) for d in data], tok.pad_token_id)
    with torch.no_grad():
        expected = load_model("tiny-llama")(**batch).loss
    first = run.metrics()[0]
    assert first["loss"] == pytest.approx(float(expected), rel=1e-5)
    assert run.summary["data"]["train_samples"] == 4 and run.info["stage"] == "selftrain"


def test_nothing_kept_is_a_clear_error(prompts: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"none of 12 samples reached selftrain.min_reward=2.0"):
        tunelab.train(cfg(prompts, tmp_path / "none", min_reward=2.0), progress=False)


def test_select() -> None:
    assert select([0.1, 0.5, 0.5, 0.9, 0.2, 0.0], 3, 0.3, "best") == [False, True, False, True, False, False]
    assert select([0.1, 0.5, 0.5, 0.9, 0.2, 0.0], 3, 0.3, "all") == [False, True, True, True, False, False]
    assert select([0.1, 0.2], 2, 0.5, "best") == [False, False]
