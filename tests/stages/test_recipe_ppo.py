"""The ppo stage end to end against a reward run: scores, KL, value head, the loss decomposition."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

import tunelab


def test_ppo_against_a_reward_run(tmp_path: Path) -> None:
    pairs = [{"prompt": f"Topic {i}?", "chosen": f"A fine answer about {i}.", "rejected": "meh"} for i in range(4)]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs), encoding="utf-8")
    rm = tunelab.train({"model": {"name": "tiny-llama"}, "stage": "reward", "output_dir": str(tmp_path / "rm"),
                        "data": {"train": str(tmp_path / "pairs.jsonl"), "val_size": 0, "max_length": 32},
                        "method": {"name": "lora", "r": 4},
                        "train": {"max_steps": 1, "batch_size": 4, "report": False}}, progress=False)
    prompts = [{"instruction": f"Tell me about {i}.", "output": "ok"} for i in range(4)]
    (tmp_path / "prompts.json").write_text(json.dumps(prompts), encoding="utf-8")
    cfg = {"model": {"name": "tiny-llama"}, "stage": "ppo", "output_dir": str(tmp_path / "ppo"),
           "data": {"train": str(tmp_path / "prompts.json"), "val_size": 0, "max_length": 32},
           "method": {"name": "lora", "r": 4, "alpha": 8},
           "ppo": {"reward_model": str(rm.path), "max_new_tokens": 6, "vf_coef": 0.5},
           "train": {"max_steps": 2, "batch_size": 2, "lr": 1e-2, "warmup_ratio": 0.0, "report": False}}
    run = tunelab.train(cfg, progress=False)
    lines = [m for m in run.metrics() if "loss" in m]
    first = lines[0]
    # step 1: policy == reference (KL 0), on-policy (ratio 1), whitened advantages have zero mean, so the policy
    # term vanishes and the loss is the weighted value loss
    assert first["kl"] == 0.0 and first["ratio"] == 1.0 and first["pg_loss"] == pytest.approx(0.0, abs=1e-6)
    assert first["loss"] == pytest.approx(first["pg_loss"] + 0.5 * first["vf_loss"], rel=1e-5)
    assert lines[1]["kl"] != 0.0  # the adapter moved away from the reference
    rows = [json.loads(line) for line in (run.path / "completions.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and first["score"] == pytest.approx((rows[0]["score"] + rows[1]["score"]) / 2, rel=1e-5)
    weights = run.path / "adapter"
    assert load_file(str(weights / "head.safetensors"))["weight"].shape == (1, 64)  # the value head
    adapter = load_file(str(weights / "adapter_model.safetensors"))
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in adapter.items())
    bad = {**cfg, "output_dir": str(tmp_path / "bad"), "ppo": {"reward_model": str(run.path)}}
    with pytest.raises(ValueError, match=r"is a ppo run; train one with stage: reward first"):
        tunelab.train(bad, progress=False)


@pytest.mark.parametrize("rank", [0, 1])
def test_only_rank_0_appends_completions(rank: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from tunelab.config.stages import PpoCfg
    from tunelab.engine import distributed
    from tunelab.models import load_tokenizer
    from tunelab.stages.ppo import PpoStep

    monkeypatch.setattr(distributed, "_STATE", distributed.Parallel("ddp", rank=rank, world_size=2))
    tok = load_tokenizer("tiny-llama")
    step = PpoStep(PpoCfg(reward_model="unused"), None, None, tok, tok.chat_template, tmp_path / "completions.jsonl")
    answer = tok("fine", add_special_tokens=False)["input_ids"]
    sequences = torch.tensor([[7, 8, *answer]])  # (1, P + L): a 2-token prompt, then the answer
    scored = {"attention_mask": torch.ones_like(sequences)}
    batch = {"attention_mask": torch.ones(1, 2, dtype=torch.long), "prompts": [[{"role": "user", "content": "q"}]]}
    step._log(sequences, scored, torch.tensor([0.25]), batch, training=True)
    path = tmp_path / "completions.jsonl"
    assert path.exists() == (rank == 0)
    if rank == 0:
        assert [json.loads(line) for line in path.read_text().splitlines()] == [
            {"split": "train", "prompt": "q", "completion": "fine", "score": 0.25}]
