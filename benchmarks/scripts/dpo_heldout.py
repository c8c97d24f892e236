"""DPO on real preference pairs: a split by prompt, and held-out preference before/after training.

``split`` cuts LLaMA-Factory's ``dpo_en_demo.json`` (ShareGPT conversations + chosen/rejected) into a training
file and a held-out file by prompt: records sharing a prompt land on the same side, so no held-out prompt was
seen in training. ``score`` reads a finished DPO run and scores each held-out pair exactly as the stage does
(same template, same ``data.max_length`` truncation): the summed log-probability of the chosen and of the
rejected answer, under the base model (the run's adapters off) and under the tuned model. It prints

- ``prefers_chosen``: share of pairs with ``log p(chosen | x) > log p(rejected | x)``, base and tuned;
- ``prefers_chosen_per_token``: the same with each answer's log-probability divided by its scored tokens
  (answers of different lengths compared by their mean token log-probability, as SimPO and lm-eval's
  ``acc_norm`` do);
- ``implicit_reward_accuracy``: DPO's own metric, share of pairs whose chosen log-ratio
  ``log pi / pi_ref`` is above the rejected one's.

Usage (from the repository root)::

    python benchmarks/scripts/dpo_heldout.py split ../shared/data/llamafactory_demo/dpo_en_demo.json \
        --out runs/dpo-real --heldout 0.2 --seed 0
    tunelab train examples/dpo_real_pairs.yaml
    python benchmarks/scripts/dpo_heldout.py score runs/dpo-real-lora --data runs/dpo-real/heldout.json
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch

from tunelab.data.stage_formats import load_preference
from tunelab.run import Run
from tunelab.training.common import IGNORE_INDEX, sequence_logps
from tunelab.training.pairs import collate_pairs, pair_samples
from tunelab.utils.io import atomic_write_json


def split(path: Path, out: Path, heldout: float, seed: int) -> dict:
    """Write ``out/train.json`` and ``out/heldout.json``, grouping records by their prompt (conversation)."""
    records = json.loads(path.read_text(encoding="utf-8"))
    by_prompt: dict[str, list[dict]] = {}
    for rec in records:
        by_prompt.setdefault(json.dumps(rec["conversations"], ensure_ascii=False, sort_keys=True), []).append(rec)
    prompts = sorted(by_prompt)
    random.Random(seed).shuffle(prompts)
    n_held = round(len(prompts) * heldout)
    held = [rec for p in prompts[:n_held] for rec in by_prompt[p]]
    train = [rec for p in prompts[n_held:] for rec in by_prompt[p]]
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train.json", train), ("heldout.json", held)):
        (out / name).write_text(json.dumps(rows, ensure_ascii=False, indent=1), encoding="utf-8")
    result = {"source": str(path), "prompts": len(prompts), "train_records": len(train),
              "heldout_records": len(held), "heldout_prompts": n_held, "seed": seed}
    print(json.dumps(result))
    return result


@torch.no_grad()
def pair_logps(model, samples: list, pad_id: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed answer log-probs ``(N,)`` of the chosen and of the rejected answers."""
    chosen, rejected = [], []
    for i in range(0, len(samples), batch_size):
        batch = collate_pairs(samples[i:i + batch_size], pad_id)
        n = batch["input_ids"].shape[0] // 2
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
        logps = sequence_logps(logits, batch["labels"])  # (2n,)
        chosen.append(logps[:n])
        rejected.append(logps[n:])
    return torch.cat(chosen), torch.cat(rejected)


def load_tuned(run: Run, checkpoint: Path | None):
    """(model, tokenizer, template): the finished run, or the LoRA weights of one of its step checkpoints."""
    if checkpoint is None:
        return run.load_model(device="cpu")
    from peft import PeftModel

    from tunelab.models import load_model

    cfg = run.config.model
    base = load_model(run.base_model_name, cfg.dtype, "cpu", cfg.trust_remote_code)  # as Run.load_model does
    return PeftModel.from_pretrained(base, str(checkpoint / "weights")), run.load_tokenizer(), run.chat_template


def base_logps(model, samples: list, pad_id: int, batch_size: int, key: dict,
               cache: Path | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The base model's (adapters off) summed log-probs of each pair, read from ``cache`` when it holds them.

    The base model is the same for every checkpoint and every run of one base, so scoring a curve of
    checkpoints computes it once. ``key`` (base model, data file, max_length, pairs) must match the cache's,
    else the log-probs are computed again and the cache rewritten.
    """
    if cache is not None and cache.is_file():
        saved = json.loads(cache.read_text(encoding="utf-8"))
        if saved.get("key") == key:
            return torch.tensor(saved["chosen"]), torch.tensor(saved["rejected"])
    with model.disable_adapter():  # the base model: the reference DPO trained against
        chosen, rejected = pair_logps(model, samples, pad_id, batch_size)
    if cache is not None:
        atomic_write_json(cache, {"key": key, "chosen": chosen.tolist(), "rejected": rejected.tolist()})
    return chosen, rejected


def score(run_dir: Path, data: Path, max_length: int | None, batch_size: int, checkpoint: Path | None = None,
          base_cache: Path | None = None) -> dict:
    """Held-out preference of the base model and of the tuned run (module doc); saved next to the run."""
    torch.manual_seed(0)
    run = Run(run_dir)
    model, tok, tpl = load_tuned(run, checkpoint)
    model.eval()
    max_length = max_length or run.config.data.max_length
    samples = pair_samples(load_preference(str(data)), tok, tpl, max_length)
    key = {"base_model": run.base_model_name, "data": str(data.resolve()), "max_length": max_length,
           "pairs": len(samples)}
    base_c, base_r = base_logps(model, samples, tok.pad_token_id, batch_size, key, base_cache)
    tuned_c, tuned_r = pair_logps(model, samples, tok.pad_token_id, batch_size)
    counts = collate_pairs(samples, tok.pad_token_id)["labels"].ne(IGNORE_INDEX).sum(-1).clamp(min=1).float()
    n_c, n_r = counts[:len(samples)], counts[len(samples):]  # answer tokens scored, chosen and rejected
    share = lambda a, b: round(float((a > b).float().mean()), 4)
    result = {"run": str(run_dir), "checkpoint": None if checkpoint is None else str(checkpoint), "data": str(data), "pairs": len(samples), "max_length": max_length,
              "pairs_cut": sum(s.chosen.truncated or s.rejected.truncated for s in samples),
              "prefers_chosen_base": share(base_c, base_r), "prefers_chosen_tuned": share(tuned_c, tuned_r),
              "implicit_reward_accuracy": share(tuned_c - base_c, tuned_r - base_r),
              "prefers_chosen_per_token_base": share(base_c / n_c, base_r / n_r),
              "prefers_chosen_per_token_tuned": share(tuned_c / n_c, tuned_r / n_r),
              "mean_margin_base": round(float((base_c - base_r).mean()), 3),
              "mean_margin_tuned": round(float((tuned_c - tuned_r).mean()), 3)}
    print(json.dumps(result))
    tag = f"-{checkpoint.name}" if checkpoint is not None else ""
    atomic_write_json(run_dir / "eval" / f"heldout-preference-{data.stem}{tag}.json", result)
    return result


def main() -> None:
    torch.set_num_threads(1)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("split")
    sp.add_argument("path", type=Path)
    sp.add_argument("--out", type=Path, required=True)
    sp.add_argument("--heldout", type=float, default=0.2)
    sp.add_argument("--seed", type=int, default=0)
    sc = sub.add_parser("score")
    sc.add_argument("run", type=Path)
    sc.add_argument("--data", type=Path, required=True)
    sc.add_argument("--max-length", type=int, default=None)
    sc.add_argument("--batch-size", type=int, default=4)
    sc.add_argument("--checkpoint", type=Path, default=None, help="score this step checkpoint of the run instead")
    sc.add_argument("--base-cache", type=Path, default=None,
                    help="JSON file keeping the base model's log-probs between calls (same base, data and length)")
    args = ap.parse_args()
    if args.cmd == "split":
        split(args.path, args.out, args.heldout, args.seed)
    else:
        score(args.run, args.data, args.max_length, args.batch_size, args.checkpoint, args.base_cache)


if __name__ == "__main__":
    main()
