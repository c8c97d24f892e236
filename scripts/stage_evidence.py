"""Small, reproducible before/after measurements of the learning stages (docs/stages.md, "Measured on ...").

Each experiment builds a synthetic rule-based task, measures the base model on a held-out split, trains one
stage with LoRA through ``tunelab.train`` and measures the trained run on the same held-out split:

- ``dpo``: chosen answers follow a format rule (they start with "Sure! "), rejected ones don't. Before: share
  of held-out pairs where the base model gives the chosen answer a higher log-prob. After: the same share for
  the trained policy, and DPO's implicit-reward accuracy (policy-vs-reference log-ratio of chosen above that
  of rejected).
- ``grpo``: reward 1 when the answer contains an exclamation mark. Before/after: mean reward of sampled
  answers to held-out prompts.
- ``fudan``: writes the Fudan-news subsets used by the worked example in docs/stages.md.

Usage: ``python scripts/stage_evidence.py dpo --out runs/evidence`` (prints and saves a JSON result).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import time
from pathlib import Path

import torch

import tunelab
from tunelab.data.templates import prompt_ids, render
from tunelab.infer.generate import generate
from tunelab.models import load_model, load_tokenizer
from tunelab.stages.common import sequence_logps
from tunelab.utils.io import atomic_write_json, atomic_write_jsonl

CATEGORIES: dict[str, list[str]] = {
    "fruit": ["apple", "banana", "cherry", "mango", "peach", "plum", "grape", "lemon"],
    "colour": ["red", "blue", "green", "yellow", "purple", "orange", "black", "white"],
    "animal": ["cat", "dog", "horse", "tiger", "rabbit", "eagle", "whale", "fox"],
    "city": ["Paris", "Tokyo", "Cairo", "Lima", "Oslo", "Rome", "Delhi", "Sydney"],
    "tool": ["hammer", "saw", "drill", "wrench", "chisel", "shovel", "rake", "axe"],
    "drink": ["tea", "coffee", "milk", "juice", "water", "cocoa", "lemonade", "soda"],
}
HELD_OUT_CATEGORIES = ("tool", "drink")  # never seen in training
TOPICS = ["the sea", "winter", "music", "a garden", "the moon", "coffee", "trains", "a library", "rain", "cats",
          "mountains", "bread", "friendship", "the city", "a forest", "football", "books", "the sky", "spring",
          "a river", "dogs", "snow", "the desert", "a market"]
EXCLAIM = "!"


def preference_pairs(seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(train, held_out) TRL-style pairs: chosen = "Sure! <item>.", rejected = "<item>." (categories disjoint)."""
    rng = random.Random(seed)
    train, held = [], []
    for cat, items in CATEGORIES.items():
        for item in items:
            pair = {"prompt": f"Name a {cat}.", "chosen": f"Sure! {item.capitalize()}.",
                    "rejected": f"{item.capitalize()}."}
            (held if cat in HELD_OUT_CATEGORIES else train).append(pair)
    rng.shuffle(train)
    return train, held


def answer_logps(model, tokenizer, template: str, pairs: list[dict], side: str) -> torch.Tensor:
    """(N,) summed log-probs of ``pair[side]`` as the assistant's answer (plus end of turn), as the stages score it."""
    out = []
    for p in pairs:
        user = [{"role": "user", "content": p["prompt"]}]
        prompt = prompt_ids(tokenizer, template, user)
        full_text = render(tokenizer, template, user + [{"role": "assistant", "content": p[side]}])
        full = tokenizer(full_text, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([full])  # (1, T)
        labels = ids.clone()
        labels[:, :len(prompt)] = -100
        with torch.no_grad():
            out.append(sequence_logps(model(input_ids=ids).logits, labels)[0])
    return torch.stack(out)


def preference_accuracy(chosen: torch.Tensor, rejected: torch.Tensor) -> float:
    """Share of pairs whose chosen score is strictly higher (ties count as wrong)."""
    return float((chosen > rejected).float().mean())


def run_dpo(out: Path, model_name: str = "smollm2-135m", steps: int = 30, batch_size: int = 4, lr: float = 5e-4,
            beta: float = 0.1, seed: int = 0) -> dict:
    """Train DPO on the synthetic pairs and report held-out accuracies before and after (see module doc)."""
    train, held = preference_pairs(seed)
    atomic_write_jsonl(out / "dpo_train.jsonl", train)
    atomic_write_jsonl(out / "dpo_heldout.jsonl", held)
    t0 = time.time()
    run = tunelab.train({
        "model": {"name": model_name}, "stage": "dpo", "output_dir": str(out / "dpo-run"),
        "data": {"train": str(out / "dpo_train.jsonl"), "val_size": 0, "max_length": 64},
        "method": {"name": "lora", "r": 8, "alpha": 16}, "preference": {"loss": "sigmoid", "beta": beta},
        "train": {"max_steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "report": False}},
        progress=False)
    train_s = time.time() - t0
    model, tok, tpl = run.load_model(device="cpu")
    with model.disable_adapter():  # the reference: the base model (LoRA adapters off)
        ref_c, ref_r = (answer_logps(model, tok, tpl, held, s) for s in ("chosen", "rejected"))
    pol_c, pol_r = (answer_logps(model, tok, tpl, held, s) for s in ("chosen", "rejected"))
    result = {
        "experiment": "dpo", "model": model_name, "train_pairs": len(train), "heldout_pairs": len(held),
        "steps": steps, "batch_size": batch_size, "lr": lr, "beta": beta, "train_seconds": round(train_s, 1),
        "before_logp_accuracy": preference_accuracy(ref_c, ref_r),
        "after_logp_accuracy": preference_accuracy(pol_c, pol_r),
        "after_implicit_reward_accuracy": preference_accuracy(pol_c - ref_c, pol_r - ref_r),
        "after_mean_margin": float(beta * ((pol_c - ref_c) - (pol_r - ref_r)).mean()),
        "run": str(run.path)}
    atomic_write_json(out / "dpo_result.json", result)
    return result


def grpo_prompts(seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(train, held_out) Alpaca records asking for one short sentence about a topic (topics disjoint)."""
    rows = [{"instruction": f"Write one short sentence about {t}.", "output": f"I love {t}!"} for t in TOPICS]
    random.Random(seed).shuffle(rows)
    return rows[:16], rows[16:]


def mean_reward(model, tokenizer, template: str, rows: list[dict], samples: int, max_new_tokens: int,
                seed: int) -> float:
    """Mean reward (1 if the answer contains "!") over ``samples`` sampled answers (temperature 1) per prompt."""
    torch.manual_seed(seed)
    convs = [[{"role": "user", "content": r["instruction"]}] for r in rows for _ in range(samples)]
    answers = generate(model, tokenizer, template, convs, max_new_tokens, temperature=1.0, batch_size=16)
    return sum(EXCLAIM in a for a in answers) / len(answers)


def run_grpo(out: Path, model_name: str = "smollm2-135m", steps: int = 20, batch_size: int = 4,
             group_size: int = 4, max_new_tokens: int = 24, lr: float = 2e-4, samples: int = 8,
             seed: int = 0) -> dict:
    """Train GRPO with reward "contains !" and report held-out mean reward before and after (see module doc)."""
    train, held = grpo_prompts(seed)
    atomic_write_json(out / "grpo_train.json", train)
    base, tok = load_model(model_name), load_tokenizer(model_name)
    before = mean_reward(base, tok, tok.chat_template, held, samples, max_new_tokens, seed)
    del base
    t0 = time.time()
    run = tunelab.train({
        "model": {"name": model_name}, "stage": "grpo", "output_dir": str(out / "grpo-run"),
        "data": {"train": str(out / "grpo_train.json"), "val_size": 0, "max_length": 128},
        "method": {"name": "lora", "r": 8, "alpha": 16},
        "grpo": {"group_size": group_size, "max_new_tokens": max_new_tokens, "rewards": ["builtin:format_regex"],
                 "format_regex": re.escape(EXCLAIM), "beta": 0.04},
        "train": {"max_steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "report": False}},
        progress=False)
    train_s = time.time() - t0
    model, tok, tpl = run.load_model(device="cpu")
    after = mean_reward(model, tok, tpl, held, samples, max_new_tokens, seed)
    train_rewards = [m["reward"] for m in run.metrics() if "reward" in m]
    result = {
        "experiment": "grpo", "model": model_name, "train_prompts": len(train), "heldout_prompts": len(held),
        "samples_per_heldout_prompt": samples, "steps": steps, "batch_size": batch_size, "group_size": group_size,
        "max_new_tokens": max_new_tokens, "lr": lr, "train_seconds": round(train_s, 1),
        "before_mean_reward": before, "after_mean_reward": after,
        "train_reward_first5": sum(train_rewards[:5]) / max(1, len(train_rewards[:5])),
        "train_reward_last5": sum(train_rewards[-5:]) / max(1, len(train_rewards[-5:])), "run": str(run.path)}
    atomic_write_json(out / "grpo_result.json", result)
    return result


def fudan_subset(src: Path, dst: Path, n: int, max_chars: int) -> list[dict]:
    """The first ``n`` records of a Fudan-news file with each news text cut to ``max_chars`` characters.

    Keeps prompts short enough for CPU training and evaluation at small ``max_length``; the system prompt,
    the instruction and the ``\\boxed{label}`` answer are unchanged.
    """
    rows = [json.loads(line) for line in src.read_text(encoding="utf-8").splitlines() if line.strip()][:n]
    for row in rows:
        user = next(m for m in row["messages"] if m["role"] == "user")
        head, sep, news = user["content"].partition("新闻：")
        user["content"] = head + sep + news[:max_chars]
    atomic_write_jsonl(dst, rows)
    return rows


EXPERIMENTS = {"dpo": run_dpo, "grpo": run_grpo}


def main() -> None:
    """Command line: run one experiment (or write the Fudan subsets) and print its result as JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("experiment", choices=[*EXPERIMENTS, "fudan"])
    ap.add_argument("--out", type=Path, default=Path("runs/evidence"))
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--data", type=Path, default=Path("../shared/data"), help="fudan: the shared data folder")
    ap.add_argument("--n-train", type=int, default=64)
    ap.add_argument("--n-val", type=int, default=40)
    ap.add_argument("--max-chars", type=int, default=120)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.experiment == "fudan":
        fudan_subset(args.data / "fudan_news_train.jsonl", args.out / "fudan_train.jsonl", args.n_train,
                     args.max_chars)
        fudan_subset(args.data / "fudan_news_val.jsonl", args.out / "fudan_val.jsonl", args.n_val, args.max_chars)
        print(json.dumps({"train": str(args.out / "fudan_train.jsonl"), "val": str(args.out / "fudan_val.jsonl")}))
        return
    kw = {"model_name": args.model} | ({"steps": args.steps} if args.steps else {})
    kw |= {"batch_size": args.batch_size} if args.batch_size else {}
    print(json.dumps(EXPERIMENTS[args.experiment](args.out, **kw), indent=1))


if __name__ == "__main__":
    main()
