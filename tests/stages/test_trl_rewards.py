"""Reward functions written for TRL's GRPOTrainer (``def reward(completions, **kwargs)``) work unchanged in grpo
and selftrain, beside tunelab's own ``(completions, answers, prompts)``; a function fitting neither is one line.

The TRL functions are TRL's own (``trl.rewards``) and the examples of TRL's GRPOTrainer documentation, copied as
written there; the expected values come from calling them directly the way GRPOTrainer calls them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import tunelab
from tunelab.config import ConfigError
from tunelab.training.rewards import TrlReward, load_reward, load_rewards, reward_convention, score

trl_rewards = pytest.importorskip("trl.rewards")

# --- TRL's documented examples (GRPOTrainer docs, "Using a custom reward function"), verbatim ----------------

DOC_EXAMPLES = '''
import re


def reward_len(completions, **kwargs):
    return [-abs(20 - len(completion)) for completion in completions]


def format_reward_func(completions, **kwargs):
    """Reward function that checks if the completion has a specific format."""
    pattern = r"^<think>.*?</think><answer>.*?</answer>$"
    completion_contents = [completion[0]["content"] for completion in completions]
    matches = [re.match(pattern, content) for content in completion_contents]
    return [1.0 if match else 0.0 for match in matches]


def reward_func(completions, ground_truth, **kwargs):
    # Regular expression to capture content inside \\\\boxed{}
    matches = [re.search(r"\\\\boxed\\{(.*?)\\}", completion) for completion in completions]
    contents = [match.group(1) if match else "" for match in matches]
    # Reward 1 if the content is the same as the ground truth, 0 otherwise
    return [1.0 if c == gt else 0.0 for c, gt in zip(contents, ground_truth)]


def answer_reward(completions, answer, **kwargs):
    return [1.0 if a in c[0]["content"] else 0.0 for c, a in zip(completions, answer)]


def ids_reward(completion_ids, **kwargs):
    return [float(len(ids)) for ids in completion_ids]


def prompt_reward(prompts, completions, **kwargs):
    return [float(len(p[-1]["content"]) > len(c[0]["content"])) for p, c in zip(prompts, completions)]


def length_reward(completions, **kwargs):
    return [float(len(c)) for c in completions]


def neither(text):
    return [0.0]


def tunelab_style(completions, answers, prompts):
    return [float(a in c) for c, a in zip(completions, answers)]
'''


@pytest.fixture()
def reward_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # reward files are found relative to the working directory
    path = tmp_path / "trl_rewards.py"
    path.write_text(DOC_EXAMPLES, encoding="utf-8")
    return path


TEXTS = ["<think>a</think><answer>\\boxed{4}</answer>", "The answer is \\boxed{5}", "4"]
PROMPTS = [[{"role": "user", "content": "What is 2 + 2? Answer in a box, please."}]] * 3


def test_conventions_are_told_apart() -> None:
    assert reward_convention(lambda completions, answers, prompts: []) == "tunelab"
    assert reward_convention(lambda c, a, p, **kw: []) == "tunelab"
    assert reward_convention(lambda completions, **kwargs: []) == "trl"
    assert reward_convention(lambda prompts, completions, **kwargs: []) == "trl"
    assert reward_convention(lambda completions, ground_truth, **kwargs: []) == "trl"
    assert reward_convention(lambda prompts, completions, completion_ids, **kwargs: []) == "trl"
    assert reward_convention(trl_rewards.think_format_reward) == "trl"
    assert reward_convention(trl_rewards.get_soft_overlong_punishment(8, 4)) == "trl"
    assert reward_convention(trl_rewards.accuracy_reward) == "trl"  # (completions, solution, log_extra=None, **kw)
    assert reward_convention(lambda text: []) is None
    assert reward_convention(lambda a, b: []) is None


def test_documented_trl_examples_score_as_grpotrainer_calls_them(reward_file: Path) -> None:
    columns = [{"answer": "4", "ground_truth": "4"}] * 3
    ids = [[1, 2, 3], [4], [5, 6]]
    chat = {"completion_ids": ids, "columns": columns, "conversational": True}
    plain = {"completion_ids": ids, "columns": columns, "conversational": False}
    as_messages = [[{"role": "assistant", "content": t}] for t in TEXTS]
    mod = {}
    exec(DOC_EXAMPLES, mod)  # noqa: S102 - the test's own source, the independent reference
    fns = {n: load_reward(f"trl_rewards.py:{n}") for n in
           ("reward_len", "reward_func", "length_reward", "format_reward_func", "answer_reward", "ids_reward",
            "prompt_reward")}
    assert all(isinstance(f, TrlReward) for f in fns.values())
    got = score({k: fns[k] for k in ("reward_len", "reward_func", "length_reward")}, TEXTS, ["4"] * 3,
                PROMPTS, **plain)
    assert got["reward_len"] == [float(v) for v in mod["reward_len"](TEXTS)]
    assert got["reward_func"] == mod["reward_func"](TEXTS, ground_truth=["4"] * 3) == [1.0, 0.0, 0.0]
    assert got["length_reward"] == [float(len(t)) for t in TEXTS]
    got = score({k: fns[k] for k in ("format_reward_func", "answer_reward", "ids_reward", "prompt_reward")},
                TEXTS, ["4"] * 3, PROMPTS, **chat)
    assert got["format_reward_func"] == mod["format_reward_func"](as_messages) == [1.0, 0.0, 0.0]
    assert got["answer_reward"] == mod["answer_reward"](as_messages, answer=["4"] * 3) == [1.0, 0.0, 1.0]
    assert got["ids_reward"] == [3.0, 1.0, 2.0]
    assert got["prompt_reward"] == mod["prompt_reward"](PROMPTS, as_messages)
    # TRL's own reward functions, from trl.rewards
    think = TrlReward(trl_rewards.think_format_reward, "think_format_reward")
    overlong = TrlReward(trl_rewards.get_soft_overlong_punishment(3, 2), "overlong")
    got = score({"think": think, "overlong": overlong}, TEXTS, ["4"] * 3, PROMPTS, **chat)
    assert got["think"] == trl_rewards.think_format_reward(as_messages) == [1.0, 0.0, 0.0]
    assert got["overlong"] == trl_rewards.get_soft_overlong_punishment(3, 2)(completion_ids=ids) == [-1.0, 0.0, -0.5]


def test_a_function_fitting_neither_signature_is_one_line_naming_it_and_both(reward_file: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_rewards(["trl_rewards.py:neither", "trl_rewards.py:tunelab_style"], "grpo.rewards")
    assert e.value.problems == [
        "grpo.rewards: trl_rewards.py:neither(text) fits neither accepted signature: tunelab's "
        "f(completions, answers, prompts) or TRL's f(completions, **kwargs) (called with keywords prompts, "
        "completions, completion_ids and the record's other columns, e.g. answer)"]


def _prompts(tmp_path: Path, chat: bool) -> Path:
    if chat:
        rows = [{"messages": [{"role": "user", "content": f"What is {a} + 1?"},
                              {"role": "assistant", "content": str(a + 1)}], "answer": str(a + 1)} for a in range(4)]
    else:
        rows = [{"instruction": f"What is {a} + 1?", "output": str(a + 1), "ground_truth": str(a + 1)}
                for a in range(4)]
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_grpo_trains_with_trl_rewards_and_record_columns(reward_file: Path, tmp_path: Path) -> None:
    cfg = {"model": {"name": "tiny-llama"}, "stage": "grpo", "output_dir": str(tmp_path / "grpo"),
           "data": {"train": str(_prompts(tmp_path, chat=True)), "max_length": 64, "val_size": 0.0},
           "method": {"name": "lora", "r": 4, "alpha": 8},
           "grpo": {"group_size": 2, "max_new_tokens": 6,
                    "rewards": ["trl_rewards.py:answer_reward", "trl_rewards.py:ids_reward",
                                "builtin:answer_match"]},
           "train": {"max_steps": 1, "batch_size": 2, "lr": 1e-2, "report": False}}
    run = tunelab.train(cfg, progress=False)
    logged = [json.loads(line) for line in (run.path / "completions.jsonl").read_text().splitlines()]
    assert len(logged) == 4
    for row in logged:  # the record's `answer` column reached the TRL function under its own name
        assert row["rewards"]["answer_reward"] == float(row["reference"] in row["completion"])
        assert 1 <= row["rewards"]["ids_reward"] <= 6


def test_selftrain_takes_a_trl_reward_on_plain_records(reward_file: Path, tmp_path: Path) -> None:
    cfg = {"model": {"name": "tiny-llama"}, "stage": "selftrain", "output_dir": str(tmp_path / "st"),
           "data": {"train": str(_prompts(tmp_path, chat=False)), "max_length": 64, "val_size": 0.0},
           "method": {"name": "lora", "r": 4, "alpha": 8},
           "selftrain": {"mode": "rejection", "samples_per_prompt": 2, "max_new_tokens": 6,
                         "rewards": ["trl_rewards.py:length_reward", "trl_rewards.py:reward_func"],
                         "min_reward": 0.0},
           "train": {"max_steps": 1, "batch_size": 4, "lr": 1e-2, "report": False}}
    run = tunelab.train(cfg, progress=False)
    rows = [json.loads(line) for line in (run.path / "selftrain_samples.jsonl").read_text().splitlines()]
    assert len(rows) == 8
    for row in rows:  # plain (alpaca) records: completions are strings, as in TRL's standard format
        assert row["rewards"]["length_reward"] == float(len(row["completion"]))
        boxed = re.search(r"\\boxed\{(.*?)\}", row["completion"])
        assert row["rewards"]["reward_func"] == float(bool(boxed) and boxed.group(1) == row["reference"])


def test_a_missing_column_is_refused_before_training(reward_file: Path, tmp_path: Path) -> None:
    cfg = {"model": {"name": "tiny-llama"}, "stage": "grpo", "output_dir": str(tmp_path / "grpo"),
           "data": {"train": str(_prompts(tmp_path, chat=True)), "max_length": 64, "val_size": 0.0},
           "grpo": {"group_size": 2, "max_new_tokens": 4, "rewards": ["trl_rewards.py:reward_func"]},
           "train": {"max_steps": 1, "batch_size": 2, "report": False}}
    with pytest.raises(ConfigError, match=r"grpo.rewards: trl_rewards.py:reward_func needs ground_truth, which is "
                                          r"not a column of the records \(they have: answer\)"):
        tunelab.train(cfg, progress=False)
