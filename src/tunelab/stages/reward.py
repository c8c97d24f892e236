"""Reward modelling: the Bradley-Terry pairwise loss on scalar rewards of chosen vs rejected responses.

A reward model maps (prompt, response) to one scalar. Trained on preference pairs, it learns
``P(chosen > rejected) = sigmoid(r_chosen - r_rejected)`` (Bradley & Terry 1952; InstructGPT, Ouyang et al.
2022, Eq. 1). Llama 2 (Touvron et al. 2023, Eq. 2) adds a margin for pairs rated far apart.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from tunelab.stages.common import check_same_shape


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
