"""Does domain adaptation (classify + ``domain:``) help a news classifier on shifted text? A CPU experiment.

The shift is built from ``../shared/data/fudan_news_{train,val}.jsonl`` (4 topics, 80 articles each per file):

- source (labelled): the *lead* of an article, its first ``--chars`` characters (headline and first sentence);
- target (unlabelled in training): the *tail* of other articles, their last ``--chars`` characters (body text
  far from the headline: other words, no title, often a sentence cut in the middle).

Training articles are split in two halves: even-numbered ones give the labelled source leads, odd-numbered
ones the unlabelled target tails (never the same article in both). Every run is evaluated on the tails of the
validation articles (the target test, its labels used only for scoring) and on their leads (source test).

Usage (from the repository root; each run is a normal ``tunelab train``)::

    python benchmarks/scripts/domain_shift.py build --out runs/shift
    python benchmarks/scripts/domain_shift.py run --out runs/shift --method none dann mmd
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

DATA = Path("../shared/data")


def news_text(record: dict) -> str:
    """The article inside the prompt: after '新闻：', before the closing instruction."""
    user = next(m["content"] for m in record["messages"] if m["role"] == "user")
    return user.split("新闻：", 1)[-1].split("\n\n只输出", 1)[0].strip()


def build(out: Path, chars: int) -> dict:
    """Write source_train / target_unlabelled / target_test / source_test JSONL files; return their sizes."""
    out.mkdir(parents=True, exist_ok=True)
    train = [json.loads(x) for x in (DATA / "fudan_news_train.jsonl").read_text(encoding="utf-8").splitlines()]
    val = [json.loads(x) for x in (DATA / "fudan_news_val.jsonl").read_text(encoding="utf-8").splitlines()]
    files = {
        "source_train": [{"text": news_text(r)[:chars], "label": r["label"]} for r in train[0::2]],
        "target_unlabelled": [{"text": news_text(r)[-chars:]} for r in train[1::2]],
        "target_test": [{"text": news_text(r)[-chars:], "label": r["label"]} for r in val],
        "source_test": [{"text": news_text(r)[:chars], "label": r["label"]} for r in val],
    }
    for name, rows in files.items():
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                           encoding="utf-8")
    return {k: len(v) for k, v in files.items()}


def accuracy(run_dir: Path, test: Path, max_length: int) -> float:
    """Accuracy of a classify run's head on a labelled file."""
    from functools import partial

    from tunelab.data.stage_formats import load_classification
    from tunelab.run import Run
    from tunelab.training.classes import collate_classes, head_scores, make_samples, predict
    from tunelab.training.heads import load_scorer

    run = Run(run_dir)
    model = load_scorer(run)
    tok = run.load_tokenizer()
    ex = load_classification(test)
    samples = make_samples(ex, model.labels, "head", tok, "", max_length, as_text=True)
    probs = predict(model, samples, partial(collate_classes, pad_id=tok.pad_token_id), head_scores, 16, "cpu")
    return sum(model.labels[i] == e.label for i, e in zip(probs.argmax(-1).tolist(), ex)) / len(ex)


def run(out: Path, methods: list[str], args) -> list[dict]:
    import tunelab

    results = []
    for method in methods:
        cfg = {"model": {"name": args.model},
               "data": {"train": str(out / "source_train.jsonl"), "eval": str(out / "target_test.jsonl"),
                        "max_length": args.max_length},
               "method": {"name": "freeze", "layers": 4, "head": False}, "stage": "classify",
               "classify": {"mode": "head", "pooling": "mean", "head_input": "text"},
               "optim": {"head_lr_scale": 50},
               "train": {"epochs": args.epochs, "batch_size": 8, "lr": 1e-4, "warmup_ratio": 0.05, "seed": args.seed,
                         "threads": args.threads, "report": False},
               "output_dir": str(out / f"run-{method}")}
        if method != "none":
            cfg["domain"] = {"target": str(out / "target_unlabelled.jsonl"), "method": method,
                             "weight": args.weight}
        t0 = time.time()
        r = tunelab.train(cfg, progress=False)
        row = {"method": method, "weight": None if method == "none" else args.weight,
               "target_accuracy": r.summary["accuracy"], "target_f1_macro": r.summary["f1_macro"],
               "source_accuracy": accuracy(r.path, out / "source_test.jsonl", args.max_length),
               "steps": r.summary["steps"], "seconds": round(time.time() - t0, 1)}
        print(json.dumps(row), flush=True)
        results.append(row)
        with open(out / "results.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps({**row, "model": args.model, "chars": args.chars, "max_length": args.max_length,
                                "epochs": args.epochs, "seed": args.seed}) + "\n")
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("cmd", choices=["build", "run"])
    p.add_argument("--out", type=Path, default=Path("runs/shift"))
    p.add_argument("--chars", type=int, default=60)
    p.add_argument("--method", nargs="+", default=["none", "dann", "mmd"])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--max-length", type=int, default=48)
    p.add_argument("--epochs", type=float, default=2)
    p.add_argument("--weight", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    if args.cmd == "build":
        print(build(args.out, args.chars))
    else:
        run(args.out, args.method, args)


if __name__ == "__main__":
    main()
