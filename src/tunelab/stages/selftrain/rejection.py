"""Self-training by rejection sampling (``selftrain.mode: rejection``); the stage is described in the package."""

from __future__ import annotations

from functools import partial

import torch

from tunelab.data.formats import Conversation
from tunelab.data.io import DataError
from tunelab.data.pipeline import collate, load_conversations
from tunelab.data.templates import stop_token_ids, tokenize_conversation
from tunelab.engine.loop import Recipe, fit
from tunelab.training.rollout import (
    collate_prompts,
    completion_batch,
    prompt_samples,
    reward_context,
    sample_completions,
)
from tunelab.training.setup import chat_reference_data, finish_run, load_split, say, setup_run
from tunelab.training.rewards import check_columns, load_rewards, score
from tunelab.training.lm_loss import sft_loss
from tunelab.runfolder import RunFolder
from tunelab.utils.io import atomic_write_jsonl


def select(totals: list[float], group: int, min_reward: float, keep: str) -> list[bool]:
    """Which samples to keep: per group of ``group`` samples, the best (first on ties) or all at >= min_reward."""
    kept = []
    for start in range(0, len(totals), group):
        chunk = totals[start:start + group]
        if keep == "best":
            best = max(range(len(chunk)), key=lambda i: (chunk[i], -i))
            kept += [i == best and chunk[i] >= min_reward for i in range(len(chunk))]
        else:
            kept += [value >= min_reward for value in chunk]
    return kept


@torch.no_grad()
def sample_and_judge(model, prompts: list, scfg, rewards: dict, tokenizer, template: str, batch_size: int,
                     device) -> list[dict]:
    """Every sample as a row {prompt, reference, completion, rewards, reward, kept}; prompts in order."""
    stop, pad, k = stop_token_ids(tokenizer, template), tokenizer.pad_token_id, scfg.samples_per_prompt
    weights = scfg.reward_weights or [1.0] * len(rewards)
    rows = []
    for i in range(0, len(prompts), batch_size):
        batch = collate_prompts(prompts[i:i + batch_size], pad)
        batch = {key: v.to(device) if isinstance(v, torch.Tensor) else v for key, v in batch.items()}
        sequences = sample_completions(model, batch, k, scfg, stop, pad)  # (B * k, P + L)
        scored = completion_batch(sequences, batch["attention_mask"].repeat_interleave(k, 0), stop, pad)
        width = batch["input_ids"].size(1)
        ids = [row[keep].tolist() for row, keep in zip(sequences[:, width:], scored["attention_mask"][:, width:].bool())]
        texts = [tokenizer.decode(row, skip_special_tokens=True).strip() for row in ids]
        prompt_msgs = [p for p in batch["prompts"] for _ in range(k)]
        answers = [a for a in batch["answers"] for _ in range(k)]
        per_fn = score(rewards, texts, answers, prompt_msgs, **reward_context(batch, k, ids))
        totals = [sum(w * v[j] for w, v in zip(weights, per_fn.values())) for j in range(len(texts))]
        kept = select(totals, k, scfg.min_reward, scfg.keep)
        rows += [{"prompt": prompt_msgs[j], "reference": answers[j], "completion": texts[j],
                  "rewards": {n: v[j] for n, v in per_fn.items()}, "reward": totals[j], "kept": kept[j]}
                 for j in range(len(texts))]
    return rows


def run_rejection(cfg, progress: bool = True):
    """Sample, filter and fine-tune end to end; return the run folder path."""
    scfg = cfg.selftrain
    # before the model loads and the run folder is made: an unknown reward is one error, nothing written
    rewards = load_rewards(scfg.rewards, "selftrain.rewards", scfg.format_regex, scfg.length_target)
    setup = setup_run(cfg, progress)
    train_convs, val_convs = load_split(cfg.data, lambda path: load_conversations(path, cfg.data.format)[0],
                                        cfg.train.seed, stage=cfg.stage)
    tok, tpl, max_len = setup.tokenizer, setup.template, cfg.data.max_length
    prompts = prompt_samples(cfg.data, tok, tpl, train_convs)
    check_columns(rewards, prompts[0].columns if prompts else {}, "selftrain.rewards")
    rows = sample_and_judge(setup.model, prompts, scfg, rewards, tok, tpl, cfg.train.batch_size, setup.device)
    folder = RunFolder(setup.run_dir)
    atomic_write_jsonl(folder.selftrain_samples_path, rows)
    kept = [r for r in rows if r["kept"] and r["completion"]]
    if not kept:
        best = max(r["reward"] for r in rows)
        raise DataError(f"selftrain: none of {len(rows)} samples reached selftrain.min_reward={scfg.min_reward} "
                        f"(best {best:.3f}); lower min_reward, sample more (samples_per_prompt) or start from a "
                        f"stronger model. Samples: {folder.selftrain_samples_path}")
    data = [{"messages": [*r["prompt"], {"role": "assistant", "content": r["completion"]}], "reward": r["reward"]}
            for r in kept]
    atomic_write_jsonl(folder.selftrain_data_path, data)
    train = [tokenize_conversation(tok, tpl, Conversation(d["messages"]), max_len) for d in data]
    val = [tokenize_conversation(tok, tpl, c, max_len) for c in val_convs]
    say(progress, f"selftrain: kept {len(kept)} of {len(rows)} samples ({len(train_convs)} prompts x "
        f"{scfg.samples_per_prompt}) at reward >= {scfg.min_reward}")
    result = fit(setup, Recipe(
        train=cfg.train, optim=cfg.optim, samples=train, val=val, collate=partial(collate, pad_id=tok.pad_token_id),
        loss=partial(sft_loss, label_smoothing=cfg.train.label_smoothing, speed=cfg.train.speed),
        reference_data=chat_reference_data(cfg, setup)), progress=progress)
    stats = {"format": "selftrain", "prompts": len(train_convs), "samples": len(rows), "train_samples": len(train),
             "val_samples": len(val), "mean_reward": sum(r["reward"] for r in rows) / len(rows)}
    return finish_run(setup, result.summary, stats)
