"""Reward modelling: the Bradley-Terry pairwise loss on scalar rewards of chosen vs rejected responses.

A reward model maps (prompt, response) to one scalar. Trained on preference pairs, it learns
``P(chosen > rejected) = sigmoid(r_chosen - r_rejected)`` (Bradley & Terry 1952; InstructGPT, Ouyang et al.
2022, Eq. 1). Llama 2 (Touvron et al. 2023, Eq. 2) adds a margin for pairs rated far apart.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

from tunelab.data.stage_formats import load_preference
from tunelab.engine.loop import LOSS_COUNT_KEY, Recipe, fit
from tunelab.training.common import check_same_shape
from tunelab.training.heads import HeadMethod, ScoreModel
from tunelab.training.pairs import collate_pairs, pair_samples
from tunelab.training.setup import (
    finish_run,
    load_split,
    read_metrics,
    recount_parameters,
    say,
    setup_run,
)


def pair_accuracy(chosen_rewards: Tensor, rejected_rewards: Tensor) -> Tensor:
    """Share of pairs where the chosen response scores strictly higher; ``(B,), (B,) -> ()``."""
    check_same_shape(chosen_rewards=chosen_rewards, rejected_rewards=rejected_rewards)
    return (chosen_rewards > rejected_rewards).float().mean()


def bradley_terry_loss(
    chosen_rewards: Tensor,
    rejected_rewards: Tensor,
    margin: Tensor | None = None,
    center_coef: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Pairwise reward-model loss ``-mean log sigmoid(r_chosen - r_rejected - margin)``.

    Args:
        chosen_rewards: ``(B,)`` scalar rewards of the preferred responses.
        rejected_rewards: ``(B,)`` rewards of the dispreferred ones (row i pairs with row i).
        margin: optional ``(B,)`` required gap per pair (Llama 2's rating-based margin); None means 0.
        center_coef: optional weight of ``mean((r_chosen + r_rejected)^2)``, which keeps rewards centred on 0
            (Eisenstein et al. 2023; TRL's ``center_rewards_coefficient``).

    Returns:
        ``(loss, metrics)``; metrics: ``accuracy`` (pair accuracy), ``margin`` (mean r_chosen - r_rejected),
        ``mean_reward``, ``min_reward``, ``max_reward`` over both sides, all detached.
    """
    check_same_shape(chosen_rewards=chosen_rewards, rejected_rewards=rejected_rewards, margin=margin)
    diff = chosen_rewards - rejected_rewards  # (B,)
    loss = -F.logsigmoid(diff if margin is None else diff - margin).mean()
    if center_coef is not None:
        loss = loss + center_coef * ((chosen_rewards + rejected_rewards) ** 2).mean()
    every = torch.cat([chosen_rewards, rejected_rewards]).detach()  # (2B,)
    metrics = {
        "accuracy": pair_accuracy(chosen_rewards.detach(), rejected_rewards.detach()),
        "margin": diff.detach().mean(),
        "mean_reward": every.mean(),
        "min_reward": every.min(),
        "max_reward": every.max(),
    }
    return loss, metrics


# ---------------------------------------------------------------------------------------------------------------
# The recipe (stage reward): preference pairs -> a scalar head on the decoder -> Bradley-Terry -> the loop.
# ---------------------------------------------------------------------------------------------------------------


def reward_step(model, batch: dict, center_coef: float | None = None):
    """(loss x pairs, pairs, metrics) for a ``collate_pairs`` batch: rows 0..B-1 chosen, B..2B-1 rejected."""
    rewards = model(batch["input_ids"], batch["attention_mask"]).squeeze(-1).float()  # (2B,)
    n = batch[LOSS_COUNT_KEY]
    loss, metrics = bradley_terry_loss(rewards[:n], rewards[n:], center_coef=center_coef)
    return loss * n, n, metrics


def run(cfg, progress: bool = True):
    """Train a pairwise reward model end to end and return the run folder path.

    The scorer is the base model's decoder (trained by the configured method) with a one-output linear head
    on the last token; the head is saved with the run (see ``tunelab.training.heads``).
    """
    setup = setup_run(cfg, progress)
    train_ex, val_ex = load_split(cfg.data, load_preference, cfg.train.seed, stage=cfg.stage)
    tok, tpl, max_len = setup.tokenizer, setup.template, cfg.data.max_length
    train, val = pair_samples(train_ex, tok, tpl, max_len), pair_samples(val_ex, tok, tpl, max_len)
    setup.model = ScoreModel(setup.model, 1, seed=cfg.train.seed)
    setup.method = HeadMethod(setup.method)
    recount_parameters(setup)
    say(progress, f"reward model: {len(train)} train / {len(val)} validation pairs from {cfg.data.train}")
    result = fit(setup, Recipe(
        train=cfg.train, optim=cfg.optim, samples=train, val=val,
        collate=partial(collate_pairs, pad_id=tok.pad_token_id),
        loss=partial(reward_step, center_coef=cfg.reward.center_coef),
        reference_data=lambda path: pair_samples(load_preference(path), tok, tpl, max_len)), progress=progress)
    evals = [m for m in read_metrics(setup.run_dir) if "eval_accuracy" in m]
    summary = {**result.summary, "eval_accuracy": evals[-1]["eval_accuracy"] if evals else None}
    stats = {"format": "preference", "train_samples": len(train), "val_samples": len(val),
             "truncated": sum(s.chosen.truncated or s.rejected.truncated for s in train + val)}
    return finish_run(setup, summary, stats)
