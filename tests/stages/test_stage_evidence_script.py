"""scripts/stage_evidence.py keeps working: its data builders, scoring and a 1-step DPO run on tiny-llama."""

import importlib.util
import json
import re
from collections import Counter
from pathlib import Path

import pytest
import torch

from tunelab.models import load_model, load_tokenizer

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "stage_evidence.py"


def _script():
    spec = importlib.util.spec_from_file_location("stage_evidence", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_synthetic_tasks_keep_held_out_disjoint():
    ev = _script()
    train, held = ev.preference_pairs()
    assert {p["prompt"] for p in train}.isdisjoint({p["prompt"] for p in held})
    assert all(p["chosen"] == "Sure! " + p["rejected"] for p in train + held)
    g_train, g_held = ev.grpo_prompts()
    assert len(g_train) == 240 and len(g_held) == 60
    assert {r["output"] for r in g_train}.isdisjoint({r["output"] for r in g_held})  # no shared answers either
    assert sorted(Counter(r["output"] for r in g_held).values()) == [4] * 15  # 15 held-out sums, 4 prompts each
    assert len({r["instruction"] for r in g_train + g_held}) == 300  # no prompt twice
    for row in g_train + g_held:
        asked = re.match(r"What is (\d+) \+ (\d+)\? Answer with just the number\.$", row["instruction"])
        a, b = map(int, asked.groups())
        assert row["output"] == str(a + b)
    assert ev.preference_accuracy(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.0, 2.0, 4.0])) == pytest.approx(1 / 3)


def test_answer_logps_matches_a_direct_log_softmax():
    ev = _script()
    model, tok = load_model("tiny-llama"), load_tokenizer("tiny-llama")
    pair = {"prompt": "Name a fruit.", "chosen": "Sure! Apple.", "rejected": "Apple."}
    got = ev.answer_logps(model, tok, tok.chat_template, [pair], "chosen")
    prompt = tok.apply_chat_template([{"role": "user", "content": pair["prompt"]}], tokenize=False,
                                     add_generation_prompt=True)
    full = tok.apply_chat_template([{"role": "user", "content": pair["prompt"]},
                                    {"role": "assistant", "content": pair["chosen"]}], tokenize=False)
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    ids = tok(full, add_special_tokens=False)["input_ids"]
    assert ids[:len(p_ids)] == p_ids
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)  # (T, V)
    want = sum(logp[t - 1, ids[t]].item() for t in range(len(p_ids), len(ids)))
    assert abs(got.item() - want) < 1e-3


def test_dpo_experiment_runs_and_its_before_number_is_the_base_model(tmp_path):
    ev = _script()
    result = ev.run_dpo(tmp_path, model_name="tiny-llama", steps=1, batch_size=2)
    assert json.loads((tmp_path / "dpo_result.json").read_text()) == result
    assert result["train_pairs"] == 32 and result["heldout_pairs"] == 16
    # "before" is computed with the adapters off: it must equal the plain base model's comparison
    model, tok = load_model("tiny-llama"), load_tokenizer("tiny-llama")
    _, held = ev.preference_pairs()
    c, r = (ev.answer_logps(model, tok, tok.chat_template, held, s) for s in ("chosen", "rejected"))
    assert result["before_logp_accuracy"] == ev.preference_accuracy(c, r)
    assert 0.0 <= result["after_implicit_reward_accuracy"] <= 1.0


def test_grpo_reward_report_matches_hand_computed_rewards() -> None:
    ev = _script()
    answers = ["42", "42 is the sum of the two numbers.", "The answer is 7.", " 9. ", "3 + 5 = 8"]
    refs = ["42", "42", "7", "8", "8"]
    # last number is the sum: 1, 1 ("two" is a word: 42 is its only number), 1, 0, 1
    # first number is the sum: 1, 1, 1, 0, 0 ("3 + 5 = 8" starts with 3)
    # length credit (full up to 20 chars, none from 40): 2 -> 1, 33 -> 2 - 33/20 = 0.35, 16 -> 1, 4 -> 1, 9 -> 1
    report = ev.reward_report(answers, refs)
    assert report["mean_correct_final_number"] == pytest.approx(4 / 5)
    assert report["correct_number"] == pytest.approx(3 / 5)
    assert report["mean_length"] == pytest.approx((1 + 0.35 + 1 + 1 + 1) / 5)
    assert report["mean_reward"] == pytest.approx((4 + 0.2 * 4.35) / 5)  # weights 1.0 and 0.2 from the example
    assert report["just_a_number"] == pytest.approx(2 / 5) and report["correct"] == pytest.approx(1 / 5)
    assert report["starts_with_number"] == pytest.approx(4 / 5)


def test_grpo_experiment_runs_and_its_before_numbers_are_the_base_model(tmp_path):
    ev = _script()
    result = ev.run_grpo(tmp_path, model_name="tiny-llama", steps=2, batch_size=2, max_new_tokens=4, samples=2,
                         eval_every=1)
    assert json.loads((tmp_path / "grpo_result.json").read_text()) == result
    assert result["train_prompts"] == 240 and result["heldout_prompts"] == 60 and len(result["examples"]) == 60
    model, tok = load_model("tiny-llama"), load_tokenizer("tiny-llama")
    _, held = ev.grpo_prompts()
    answers, refs = ev.sampled_answers(model, tok, tok.chat_template, held, 2, 4, seed=0)  # same seed: same samples
    assert result["before"] == ev.reward_report(answers, refs)
    assert [e["before"] for e in result["examples"]] == answers[::2]
    # the run is examples/grpo_addition.yaml: the correctness reward, and a held-out evaluation at each step
    rows = [json.loads(line) for line in (tmp_path / "grpo-run" / "completions.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["split"] == "train"]
    assert len(train_rows) == 2 * 2 * 4  # 2 steps x 2 prompts x group of 4
    assert set(train_rows[0]["rewards"]) == {"correct_final_number", "length"}
    assert [c["step"] for c in result["heldout_curve"]] == [1, 2]
    evals = [r for r in rows if r["split"] == "eval"]
    first_eval = evals[:12 * 4]  # 12 held-out prompts x 4 samples at step 1
    mean = sum(r["rewards"]["correct_final_number"] for r in first_eval) / len(first_eval)
    assert result["heldout_curve"][0]["rewards/correct_final_number"] == pytest.approx(mean)


def test_fudan_subset_is_balanced_cuts_news_and_keeps_answers(tmp_path, shared_data):
    ev = _script()
    src = shared_data / "fudan_news_val.jsonl"
    rows = ev.fudan_subset(src, tmp_path / "val.jsonl", n=8, max_chars=50)
    original = [json.loads(line) for line in src.read_text(encoding="utf-8").splitlines()]
    want = []  # by hand: the first two records of each label, in file order
    for row in original:
        if sum(r["label"] == row["label"] for r in want) < 2:
            want.append(row)
    reloaded = [json.loads(line) for line in (tmp_path / "val.jsonl").read_text(encoding="utf-8").splitlines()]
    assert reloaded == rows and len(rows) == 8
    assert [r["record_id"] for r in rows] == [r["record_id"] for r in want]
    for cut, orig in zip(rows, want):
        assert cut["messages"][0] == orig["messages"][0]  # the system prompt
        assert cut["messages"][-1] == orig["messages"][-1]  # the \\boxed{label} answer
        news = cut["messages"][1]["content"].split("新闻：", 1)[1]
        assert len(news) <= 50 and orig["messages"][1]["content"].split("新闻：", 1)[1].startswith(news)
