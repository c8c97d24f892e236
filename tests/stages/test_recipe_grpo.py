"""The grpo stage end to end: sampling, reward functions from a file, group advantages, the clipped loss."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import tunelab
from tunelab.stages.grpo import group_advantages
from tunelab.training.rollout import completion_batch
from tunelab.training.rewards import (
    answer_match,
    correct_final_number,
    correct_number,
    extract_answer,
    format_regex,
    length,
    load_reward,
    load_rewards,
)

REWARD_FILE = Path(__file__).parent / "fixtures" / "vowel_rewards.py"


@pytest.fixture()
def prompts_file(tmp_path: Path) -> Path:
    rows = [{"messages": [{"role": "user", "content": f"What is {a} + {b}? Answer as \\boxed{{n}}."},
                          {"role": "assistant", "content": f"\\boxed{{{a + b}}}"}]} for a in range(2) for b in range(2)]
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_grpo_trains_on_a_reward_file_and_logs_what_it_scored(prompts_file: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_rewards.py").write_text(REWARD_FILE.read_text(encoding="utf-8"), encoding="utf-8")
    monkeypatch.chdir(tmp_path)  # reward files are found relative to the working directory
    cfg = {"model": {"name": "tiny-llama"}, "stage": "grpo", "output_dir": str(tmp_path / "grpo"),
           "data": {"train": str(prompts_file), "max_length": 64, "val_size": 0.0},
           "method": {"name": "lora", "r": 4, "alpha": 8},
           "grpo": {"group_size": 4, "max_new_tokens": 8, "rewards": ["my_rewards.py:vowels", "builtin:answer_match"]},
           "train": {"max_steps": 2, "batch_size": 2, "lr": 2e-2, "warmup_ratio": 0.0, "report": False}}
    run = tunelab.train(cfg, progress=False)
    lines = [m for m in run.metrics() if "loss" in m]
    # step 1: the policy is the reference (kl 0) and the update is on-policy (ratio 1), so the loss is
    # -mean(advantage), which is 0 because advantages are z-scores within each group
    assert lines[0]["kl"] == 0.0 and lines[0]["loss"] == pytest.approx(0.0, abs=1e-6)
    assert lines[0]["grad_norm"] > 0 and lines[1]["kl"] > 0  # the adapter moved away from the reference
    rows = [json.loads(line) for line in (run.path / "completions.jsonl").read_text().splitlines()]
    first = [r for r in rows if r["call"] == 1]
    assert len(first) == 8 and all(r["split"] == "train" for r in rows)  # 2 prompts x 4 completions per step
    vowels = load_reward("my_rewards.py:vowels")
    assert [r["rewards"]["vowels"] for r in first] == pytest.approx(vowels([r["completion"] for r in first], [], []))
    assert lines[0]["rewards/vowels"] == pytest.approx(sum(r["rewards"]["vowels"] for r in first) / 8, rel=1e-6)
    total = torch.tensor([r["reward"] for r in first])
    assert [r["advantage"] for r in first] == pytest.approx(group_advantages(total, 4).tolist(), abs=1e-5)
    adapter = load_file(str(run.path / "adapter" / "adapter_model.safetensors"))
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in adapter.items())
    assert run.info["stage"] == "grpo" and run.summary["data"]["group_size"] == 4


def test_completion_batch_masks_after_the_first_stop_token() -> None:
    prompt_mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    sequences = torch.tensor([[0, 5, 6, 7, 9, 8, 9], [4, 5, 6, 9, 7, 7, 7]])  # 9 = stop token
    out = completion_batch(sequences, prompt_mask, stop_ids=[9], pad_id=0)
    assert out["attention_mask"].tolist() == [[0, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 0, 0, 0]]
    assert out["labels"].tolist() == [[-100, -100, -100, 7, 9, -100, -100], [-100, -100, -100, 9, -100, -100, -100]]
    assert out["position_ids"].tolist() == [[0, 0, 1, 2, 3, 3, 3], [0, 1, 2, 3, 3, 3, 3]]


def test_builtin_rewards_and_their_errors(tmp_path: Path) -> None:
    assert extract_answer("so it is \\boxed{4}.") == "4" and extract_answer(" 12 ") == "12"
    assert answer_match(["x \\boxed{4}", "\\boxed{5}", "4"], ["\\boxed{4}", "\\boxed{4}", "4"], []) == [1.0, 0.0, 1.0]
    assert format_regex(["\\boxed{1}", "1"], [], [], pattern=r"\\boxed\{.+?\}") == [1.0, 0.0]
    assert length(["a" * 10, "a" * 15, "a" * 30], [], [], target=10) == [1.0, 0.5, 0.0]
    with pytest.raises(ValueError, match="unknown built-in reward 'exact'; choose one of: answer_match"):
        load_reward("builtin:exact")
    with pytest.raises(ValueError, match=r"nope.py is not an existing .py file"):
        load_reward("nope.py:f")
    (tmp_path / "r.py").write_text("def good(c, a, p):\n    return [0.0] * len(c)\n")
    with pytest.raises(ValueError, match=r"has no function 'bad'; it defines good"):
        load_reward(f"{tmp_path / 'r.py'}:bad")


def test_load_rewards_lists_every_bad_reference_under_its_key() -> None:
    from tunelab.config import ConfigError

    with pytest.raises(ConfigError) as e:
        load_rewards(["builtin:length", "builtin:../../evil", "nope.py:f", "builtin"], "selftrain.rewards")
    assert e.value.problems[0] == ("selftrain.rewards[1]: unknown built-in reward '../../evil'; choose one of: "
                                   "answer_match, correct_final_number, correct_number, format_regex, length")
    assert e.value.problems[1].startswith("selftrain.rewards[2]: 'nope.py:f': nope.py is not an existing .py file")
    assert e.value.problems[2].startswith("selftrain.rewards[3]: 'builtin' must look like builtin:answer_match")
    assert len(e.value.problems) == 3
    assert list(load_rewards(["builtin:length"], "grpo.rewards")) == ["length"]


@pytest.mark.parametrize("section", ["grpo", "selftrain"])
def test_cli_refuses_an_unknown_builtin_reward_before_loading_the_model(prompts_file: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch,
                                                                        section: str) -> None:
    from typer.testing import CliRunner

    from tunelab.cli import app
    from tunelab.training import setup as recipe

    def no_model(*a, **k):
        raise AssertionError("the model was loaded before the rewards were checked")

    monkeypatch.setattr(recipe, "load_model", no_model)
    extra = {"grpo": {"rewards": ["builtin:nope"]}} if section == "grpo" else \
        {"selftrain": {"mode": "rejection", "rewards": ["builtin:nope"]}}
    cfg = {"model": {"name": "tiny-llama"}, "stage": section, "output_dir": str(tmp_path / "run"),
           "data": {"train": str(prompts_file)}, "train": {"max_steps": 1}, **extra}
    (tmp_path / "cfg.yaml").write_text(json.dumps(cfg), encoding="utf-8")  # JSON is YAML
    result = CliRunner().invoke(app, ["train", str(tmp_path / "cfg.yaml"), "--quiet"])
    assert result.exit_code == 2, result.output
    assert f"{section}.rewards[0]: unknown built-in reward 'nope'; choose one of: answer_match" in result.output
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)
    assert not (tmp_path / "run").exists()  # nothing written


def test_number_rewards_on_hand_examples() -> None:
    completions = ["55", "55.", "55, since 18 + 37 = 55", "18 + 37 = 55", "so \\boxed{55}", "fifty-five", "1,234",
                   "-3", " 055", "55.0", "", "\\boxed{18 + 37 = 55} 7"]
    answers = ["55", "55", "55", "55", "\\boxed{55}", "55", "1234", "-3", "55", "The sum is 55.", "55", "55"]
    # first number (the answer comes first); inside \boxed{} only the box counts
    assert correct_number(completions, answers, []) == [1, 1, 1, 0, 1, 0, 1, 1, 1, 1, 0, 0]
    # last number (working may come first)
    assert correct_final_number(completions, answers, []) == [1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 0, 1]
    assert correct_number(["12"], ["no number here"], []) == [0.0]  # a reference without a number: never right
    assert load_reward("builtin:correct_final_number")(["2 + 2 = 4"], ["4"], []) == [1.0]


def test_grpo_wires_the_correctness_reward_from_the_config(tmp_path: Path) -> None:
    rows = [{"instruction": f"What is {a} + {b}?", "output": str(a + b)} for a in range(3) for b in range(2)]
    (tmp_path / "sums.json").write_text(json.dumps(rows), encoding="utf-8")
    cfg = {"model": {"name": "tiny-llama"}, "stage": "grpo", "output_dir": str(tmp_path / "grpo"),
           "data": {"train": str(tmp_path / "sums.json"), "max_length": 64, "val_size": 0.0},
           "method": {"name": "lora", "r": 4, "alpha": 8},
           "grpo": {"group_size": 2, "max_new_tokens": 6, "rewards": ["builtin:correct_number", "builtin:length"],
                    "reward_weights": [1.0, 0.5], "length_target": 4},
           "train": {"max_steps": 2, "batch_size": 3, "lr": 1e-2, "report": False}}
    run = tunelab.train(cfg, progress=False)
    logged = [json.loads(line) for line in (run.path / "completions.jsonl").read_text().splitlines()]
    assert len(logged) == 2 * 3 * 2  # 2 steps x 3 prompts x 2 completions
    texts, refs = [r["completion"] for r in logged], [r["reference"] for r in logged]
    assert sorted(set(refs)) == ["0", "1", "2", "3"]  # the records' answers reach the reward function
    want = correct_number(texts, refs, [])
    assert [r["rewards"]["correct_number"] for r in logged] == want
    lens = length(texts, refs, [], target=4)
    assert [r["reward"] for r in logged] == pytest.approx([c + 0.5 * n for c, n in zip(want, lens)])
    first = [m for m in run.metrics() if "loss" in m][0]
    assert first["rewards/correct_number"] == pytest.approx(sum(want[:6]) / 6)


@pytest.mark.parametrize("rank", [0, 1])
def test_only_rank_0_appends_completions(rank: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tunelab.config.stages import GrpoCfg
    from tunelab.engine import distributed
    from tunelab.models import load_tokenizer
    from tunelab.stages.grpo import GrpoStep

    monkeypatch.setattr(distributed, "_STATE", distributed.Parallel("ddp", rank=rank, world_size=2))
    tok = load_tokenizer("tiny-llama")
    gcfg = GrpoCfg(group_size=2)
    step = GrpoStep(gcfg, {"length": length}, tok, tok.chat_template, None, tmp_path / "completions.jsonl")
    prompts = [[{"role": "user", "content": "hi"}]] * 2
    step._log(["a", "bb"], prompts, ["x", "x"], {"length": [1.0, 0.5]}, torch.tensor([1.0, 0.5]),
              torch.tensor([0.7, -0.7]), training=True)
    written = (tmp_path / "completions.jsonl").exists()
    assert written == (rank == 0) and step.calls == 1  # every rank counts calls; only rank 0 writes
    if written:
        rows = [json.loads(line) for line in (tmp_path / "completions.jsonl").read_text().splitlines()]
        assert [(r["completion"], r["reward"], r["advantage"]) for r in rows] == [("a", 1.0, pytest.approx(0.7)),
                                                                                  ("bb", 0.5, pytest.approx(-0.7))]
