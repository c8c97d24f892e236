"""Small, reproducible before/after measurements of the learning stages (docs/stages.md, "Measured on ...").

Each experiment builds a synthetic rule-based task, measures the base model on a held-out split, trains one
stage with LoRA through ``tunelab.train`` and measures the trained run on the same held-out split:

- ``dpo``: chosen answers follow a format rule (they start with "Sure! "), rejected ones don't. Before: share
  of held-out pairs where the base model gives the chosen answer a higher log-prob. After: the same share for
  the trained policy, and DPO's implicit-reward accuracy (policy-vs-reference log-ratio of chosen above that
  of rejected).
- ``grpo``: "What is a + b? Answer with just the number." rewarded for the right sum
  (``builtin:correct_final_number``) and a short answer (``builtin:length``), as examples/grpo_addition.yaml
  sets it. Before/after: held-out accuracy of sampled and greedy answers; the run's held-out curve.
- ``selftrain``: 4 topics of 10 words, a sentence ending on one of them; 8 labels use only each topic's first
  word, a 300-sentence unlabelled pool and 100 validation sentences use all. Baseline: the labelled-only
  model (round 0 of the run); after: the last pseudo-labelling round, on the same validation set.
- ``fudan``: writes the balanced, shortened Fudan-news subsets of the worked example
  (docs/worked-examples.md).

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
from tunelab.training.common import sequence_logps
from tunelab.training.rewards import correct_number, load_reward, reward_name, score
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


GRPO_INSTRUCTION = "What is {a} + {b}? Answer with just the number."
GRPO_CONFIG = Path(__file__).resolve().parents[1] / "examples" / "grpo_addition.yaml"  # the run it trains
START_WITH_NUMBER = re.compile(r"^\s*\d")  # reported: the answer starts with a number
JUST_NUMBER = re.compile(r"^\s*\d+\s*\.?\s*$")  # reported: the whole answer is a number


def grpo_prompts(seed: int = 0, n_train: int = 240, held_sums: int = 15, per_sum: int = 4
                 ) -> tuple[list[dict], list[dict]]:
    """(train, held_out) Alpaca records "What is a + b? Answer with just the number.", a and b in 2-39.

    The sums are split first: ``held_sums`` of them (drawn from 10-70, where each has at least ``per_sum``
    pairs) are held-out answers, with ``per_sum`` prompts each; training prompts are drawn from the pairs of
    the other sums. So no held-out answer is ever a training answer (nothing to memorise), while the held-out
    set is large enough (60 prompts by default) that a gain is not one or two answers.
    """
    rng = random.Random(seed)
    held = set(rng.sample(range(10, 71), held_sums))
    pairs = [(a, b) for a in range(2, 40) for b in range(2, 40)]
    rng.shuffle(pairs)
    row = lambda a, b: {"instruction": GRPO_INSTRUCTION.format(a=a, b=b), "output": str(a + b)}
    taken: dict[int, int] = {}
    train, held_rows = [], []
    for a, b in pairs:
        if a + b not in held:
            if len(train) < n_train:
                train.append(row(a, b))
        elif taken.get(a + b, 0) < per_sum:
            taken[a + b] = taken.get(a + b, 0) + 1
            held_rows.append(row(a, b))
    return train, held_rows


def grpo_rewards() -> tuple[dict, list[float]]:
    """The rewards and weights GRPO trains on, built as the stage builds them from examples/grpo_addition.yaml."""
    g = tunelab.load_config(GRPO_CONFIG).grpo
    fns = {reward_name(spec): load_reward(spec, g.format_regex, g.length_target) for spec in g.rewards}
    return fns, list(g.reward_weights or [1.0] * len(fns))


def reward_report(answers: list[str], references: list[str]) -> dict:
    """Mean weighted reward (what GRPO maximizes), each reward's mean, and checks of the answers.

    ``correct_final_number`` (rewarded): the answer's last number is the sum; ``correct_number``: its first
    number is (the sum comes first); ``correct``: the whole answer is the sum (``51`` or ``51.``);
    ``starts_with_number`` and ``just_a_number``: the form alone.
    """
    fns, weights = grpo_rewards()
    per_fn = score(fns, answers, references, [[] for _ in answers])
    n = len(answers)
    return {"mean_reward": sum(w * v for w, vals in zip(weights, per_fn.values()) for v in vals) / n,
            **{f"mean_{k}": sum(v) / n for k, v in per_fn.items()},
            "correct_number": sum(correct_number(answers, references, [])) / n,
            "correct": sum(a.strip().rstrip(".").strip() == r for a, r in zip(answers, references)) / n,
            "starts_with_number": sum(bool(START_WITH_NUMBER.match(a)) for a in answers) / n,
            "just_a_number": sum(bool(JUST_NUMBER.match(a)) for a in answers) / n}


def sampled_answers(model, tokenizer, template: str, rows: list[dict], samples: int, max_new_tokens: int,
                    seed: int, temperature: float = 1.0) -> tuple[list[str], list[str]]:
    """(answers, references): ``samples`` answers per prompt, at temperature 1 (as in training) by default, seeded."""
    torch.manual_seed(seed)
    convs = [[{"role": "user", "content": r["instruction"]}] for r in rows for _ in range(samples)]
    answers = generate(model, tokenizer, template, convs, max_new_tokens, temperature=temperature, batch_size=32)
    return answers, [r["output"] for r in rows for _ in range(samples)]


def run_grpo(out: Path, model_name: str = "smollm2-135m", steps: int = 60, batch_size: int = 4,
             max_new_tokens: int = 16, lr: float = 3e-4, samples: int = 4, eval_every: int = 10,
             seed: int = 0) -> dict:
    """Train examples/grpo_addition.yaml and report held-out answers before and after (see module doc).

    Before/after: ``samples`` answers per held-out prompt at temperature 1, and the greedy answer. The curve:
    the run's own held-out evaluations every ``eval_every`` steps (4 samples per prompt, the same rewards).
    """
    train, held = grpo_prompts(seed)
    atomic_write_json(out / "grpo_train.json", train)
    atomic_write_json(out / "grpo_heldout.json", held)
    base, tok = load_model(model_name), load_tokenizer(model_name)
    before_answers, refs = sampled_answers(base, tok, tok.chat_template, held, samples, max_new_tokens, seed)
    before_greedy, greedy_refs = sampled_answers(base, tok, tok.chat_template, held, 1, max_new_tokens, seed, 0.0)
    del base
    t0 = time.time()
    run = tunelab.train(GRPO_CONFIG, [
        f"model.name={model_name}", f"data.train={out / 'grpo_train.json'}", f"data.eval={out / 'grpo_heldout.json'}",
        f"grpo.max_new_tokens={max_new_tokens}", f"train.max_steps={steps}", f"train.batch_size={batch_size}",
        f"train.lr={lr}", f"train.seed={seed}", f"train.eval_every={eval_every}", f"output_dir={out / 'grpo-run'}"],
        progress=False)
    train_s = time.time() - t0
    model, tok, tpl = run.load_model(device="cpu")
    after_answers, _ = sampled_answers(model, tok, tpl, held, samples, max_new_tokens, seed)
    after_greedy, _ = sampled_answers(model, tok, tpl, held, 1, max_new_tokens, seed, 0.0)
    lines = run.metrics()
    train_rewards = [m["reward"] for m in lines if "reward" in m]
    curve = [{"step": m["step"], **{k[len("eval_"):]: v for k, v in m.items() if k.startswith("eval_reward")}}
             for m in lines if "eval_reward" in m]
    result = {
        "experiment": "grpo", "model": model_name, "config": str(GRPO_CONFIG.relative_to(GRPO_CONFIG.parents[1])),
        "train_prompts": len(train), "heldout_prompts": len(held), "samples_per_heldout_prompt": samples,
        "steps": steps, "batch_size": batch_size, "max_new_tokens": max_new_tokens, "lr": lr, "seed": seed,
        "train_seconds": round(train_s, 1),
        "before": reward_report(before_answers, refs), "after": reward_report(after_answers, refs),
        "before_greedy": reward_report(before_greedy, greedy_refs),
        "after_greedy": reward_report(after_greedy, greedy_refs),
        "heldout_curve": curve,
        "train_reward_first10": sum(train_rewards[:10]) / max(1, len(train_rewards[:10])),
        "train_reward_last10": sum(train_rewards[-10:]) / max(1, len(train_rewards[-10:])),
        "examples": [{"prompt": held[i // samples]["instruction"], "before": before_answers[i],
                      "after": after_answers[i]} for i in range(0, len(refs), samples)],
        "greedy_examples": [{"prompt": h["instruction"], "before": b, "after": a}
                            for h, b, a in zip(held, before_greedy, after_greedy)],
        "run": str(run.path)}
    atomic_write_json(out / "grpo_result.json", result)
    return result


def fudan_subset(src: Path, dst: Path, n: int, max_chars: int) -> list[dict]:
    """``n`` records of a Fudan-news file, the same number per label, with each news text cut to ``max_chars``.

    Takes the first ``n // labels`` records of every label in file order (so the subset is balanced and
    fixed), keeping the file's order. Short texts keep CPU training and evaluation at a small ``max_length``;
    the system prompt, the instruction and the ``\\boxed{label}`` answer are unchanged.
    """
    rows = [json.loads(line) for line in src.read_text(encoding="utf-8").splitlines() if line.strip()]
    per_label = n // len({r["label"] for r in rows})
    taken: dict[str, int] = {}
    subset = []
    for row in rows:
        if taken.get(row["label"], 0) < per_label:
            taken[row["label"]] = taken.get(row["label"], 0) + 1
            user = next(m for m in row["messages"] if m["role"] == "user")
            head, sep, news = user["content"].partition("新闻：")
            user["content"] = head + sep + news[:max_chars]
            subset.append(row)
    atomic_write_jsonl(dst, subset)
    return subset


SELFTRAIN_TOPICS: dict[str, list[str]] = {
    "sport": ["football", "tennis", "basketball", "golf", "hockey", "swimming", "cycling", "boxing", "rugby",
              "skiing"],
    "food": ["pizza", "soup", "bread", "cheese", "pasta", "salad", "rice", "cake", "noodles", "curry"],
    "weather": ["rain", "snow", "fog", "wind", "thunder", "sunshine", "hail", "frost", "storm", "drizzle"],
    "music": ["guitar", "piano", "violin", "drums", "jazz", "opera", "trumpet", "flute", "choir", "cello"],
}
SELFTRAIN_TEMPLATES = ["We talked about {w}", "The report was about {w}", "Her notes cover {w}",
                       "Today it was all {w}", "His question was on {w}", "The whole evening was {w}",
                       "My favourite part was the {w}", "Nobody expected the {w}", "The newsletter was on {w}",
                       "Last week it was {w}", "The meeting ended with {w}", "Everyone kept mentioning {w}"]


def selftrain_task(seed: int = 0, per_class: int = 2, n_pool: int = 300, n_val: int = 100) -> dict[str, list[dict]]:
    """The few-labels topic task: {"labelled", "unlabelled", "validation"} lists of {"text", "label"} records.

    Four topics of ten words; a sentence ends on one topic word ("Nobody expected the hail"), where the
    classification head reads. The labelled set (``per_class`` per topic, 8 in all, every topic cycling through
    the same templates so that no template hints at a topic) uses only each topic's first word; the pool and
    the validation set use all ten. The pretrained model places related words near each other, so a model
    trained on one word per topic is right and confident on the pool sentences whose words are close to it,
    and those pseudo-labels carry it further (the cluster assumption under self-training). The pool keeps its
    gold labels (never trained on: they only score the pseudo-labels); validation shares no sentence with it.
    """
    rng = random.Random(seed)
    topics = list(SELFTRAIN_TOPICS)

    def draw(n: int, seed_only: bool) -> list[dict]:
        rows = []
        for i in range(n):
            label = topics[i % len(topics)]
            word = SELFTRAIN_TOPICS[label][0] if seed_only else rng.choice(SELFTRAIN_TOPICS[label])
            template = (SELFTRAIN_TEMPLATES[(i // len(topics)) % len(SELFTRAIN_TEMPLATES)] if seed_only
                        else rng.choice(SELFTRAIN_TEMPLATES))
            rows.append({"text": template.format(w=word), "label": label})
        rng.shuffle(rows)
        return rows

    task = {"labelled": draw(per_class * len(topics), True), "unlabelled": draw(n_pool, False),
            "validation": draw(6 * n_val, False)}
    seen = {r["text"] for r in task["labelled"] + task["unlabelled"]}
    val, kept = [], set()
    for r in task["validation"]:  # distinct sentences that are neither labelled nor in the pool
        if r["text"] not in seen and r["text"] not in kept:
            kept.add(r["text"])
            val.append(r)
    task["validation"] = val[:n_val]
    return task


def selftrain_config(folder: Path, model_name: str, steps: int, batch_size: int, lr: float, rounds: int,
                     seed: int) -> dict:
    """The selftrain run on the task files in ``folder`` (its round 0 is the labelled-only baseline)."""
    return {"model": {"name": model_name}, "stage": "selftrain", "output_dir": str(folder / "run"),
            "data": {"train": str(folder / "selftrain_labelled.jsonl"),
                     "eval": str(folder / "selftrain_validation.jsonl"), "max_length": 48},
            "method": {"name": "lora", "r": 8, "alpha": 16}, "classify": {"mode": "head"},
            "selftrain": {"mode": "pseudo_label", "unlabelled": str(folder / "selftrain_unlabelled.jsonl"),
                          "threshold": 0.9, "balance": True, "rounds": rounds},
            "train": {"max_steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "report": False}}


def run_selftrain(out: Path, model_name: str = "smollm2-135m", steps: int = 30, batch_size: int = 8,
                  lr: float = 5e-4, rounds: int = 2, seeds: tuple[int, ...] = (0,)) -> dict:
    """Self-training vs the labelled-only baseline (the run's own round 0) on the same validation set.

    Seed ``s`` draws the task with ``selftrain_task(s)`` and trains with ``train.seed = s``, under
    ``out/selftrain-<s>/``; every round of a run starts from the same initialisation.
    """
    per_seed = {}
    for seed in seeds:
        folder = out / f"selftrain-{seed}"
        task = selftrain_task(seed)
        for split, rows in task.items():
            atomic_write_jsonl(folder / f"selftrain_{split}.jsonl", rows)
        t0 = time.time()
        run = tunelab.train(selftrain_config(folder, model_name, steps, batch_size, lr, rounds, seed), progress=False)
        keys = ("round", "train_examples", "kept", "pseudo_accuracy", "pool_accuracy", "accuracy", "f1_macro", "auc")
        per_seed[seed] = {"seconds": round(time.time() - t0, 1), "stopped": run.summary["selftrain"]["stopped"],
                          "rounds": [{k: r.get(k) for k in keys} for r in run.summary["selftrain"]["rounds"]],
                          "run": str(run.path)}
        atomic_write_json(folder / "selftrain_result.json", per_seed[seed])
    base = [s["rounds"][0]["accuracy"] for s in per_seed.values()]
    final = [s["rounds"][-1]["accuracy"] for s in per_seed.values()]
    result = {"experiment": "selftrain", "model": model_name, "steps_per_round": steps, "batch_size": batch_size,
              "lr": lr, "threshold": 0.9, "balance": True, "rounds": rounds,
              "baseline_accuracy_mean": sum(base) / len(base), "selftrain_accuracy_mean": sum(final) / len(final),
              "seeds": per_seed}
    atomic_write_json(out / "selftrain_result.json", result)
    return result


EXPERIMENTS = {"dpo": run_dpo, "grpo": run_grpo, "selftrain": run_selftrain}


def main() -> None:
    """Command line: run one experiment (or write the Fudan subsets) and print its result as JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("experiment", choices=[*EXPERIMENTS, "fudan"])
    ap.add_argument("--out", type=Path, default=Path("runs/evidence"))
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="selftrain: training seeds")
    ap.add_argument("--data", type=Path, default=Path("../shared/data"), help="fudan: the shared data folder")
    ap.add_argument("--n-train", type=int, default=96)
    ap.add_argument("--n-val", type=int, default=60)
    ap.add_argument("--max-chars", type=int, default=100)
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
    kw |= {"lr": args.lr} if args.lr else {}
    kw |= {"seeds": tuple(args.seeds)} if args.seeds else {}
    print(json.dumps(EXPERIMENTS[args.experiment](args.out, **kw), indent=1))


if __name__ == "__main__":
    main()
