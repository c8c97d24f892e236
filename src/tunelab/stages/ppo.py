"""PPO for language models: KL-shaped rewards, GAE advantages, clipped policy and value losses.

The RLHF recipe of Ziegler et al. 2019 / InstructGPT (Ouyang et al. 2022): a sampled completion earns the
reward model's score at its last token and a per-token penalty ``-kl_coef * KL(pi || pi_ref)``; GAE
(Schulman et al. 2016) turns those rewards and the critic's values into advantages; PPO's clipped surrogate
(Schulman et al. 2017) updates the policy and a clipped regression updates the critic.

Every per-token tensor is ``(B, T)`` over the completion tokens with ``mask`` (1 = generated token).
The mask may be left- or right-padded or have holes: masked positions are skipped, so the recursion
links each generated token to the next generated one.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tunelab.stages.common import KL_ESTIMATORS, check_same_shape, masked_mean, pick


def kl_penalty(logps: Tensor, ref_logps: Tensor, mask: Tensor, estimator: str = "k1") -> Tensor:
    """Per-token KL(pi || pi_ref) estimate on sampled tokens, 0 where masked; ``(B, T) -> (B, T)``.

    ``estimator``: ``k1`` (``log pi - log pi_ref``, unbiased, the classic RLHF penalty), ``k2`` or ``k3``
    (non-negative, lower variance); see ``tunelab.stages.common.KL_ESTIMATORS``.
    """
    check_same_shape(logps=logps, ref_logps=ref_logps, mask=mask)
    return pick(KL_ESTIMATORS, estimator, "KL estimator")(logps, ref_logps) * mask


def shaped_rewards(
    scores: Tensor, logps: Tensor, ref_logps: Tensor, mask: Tensor, kl_coef: float, estimator: str = "k1"
) -> Tensor:
    """Per-token rewards: ``-kl_coef * KL`` on every generated token, plus the sequence score on the last one.

    Args:
        scores: ``(B,)`` reward-model score of each completion.
        logps, ref_logps: ``(B, T)`` log-probs of the sampled tokens under the policy and the reference.
        mask: ``(B, T)`` generated tokens.

    Returns:
        ``(B, T)``, detached; a row without generated tokens gets no reward.
    """
    with torch.no_grad():  # rewards are targets, never differentiated
        rewards = -kl_coef * kl_penalty(logps, ref_logps, mask, estimator)  # (B, T)
    positions = torch.arange(mask.size(1), device=mask.device).expand_as(mask)  # (B, T)
    last = torch.where(mask.bool(), positions, -1).max(dim=1).values  # (B,) index of the last generated token
    has_tokens = last >= 0
    rows = torch.arange(mask.size(0), device=mask.device)[has_tokens]
    return rewards.index_put((rows, last[has_tokens]), scores[has_tokens].to(rewards.dtype), accumulate=True)


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95) -> tuple[Tensor, Tensor]:
    """Generalized Advantage Estimation (Schulman et al. 2016, Eq. 16) over masked sequences.

    ``delta_t = r_t + gamma * V_{t'} - V_t`` and ``A_t = delta_t + gamma * lam * A_{t'}``, where ``t'`` is the next
    generated token after ``t`` (past the last one, ``V = 0`` and ``A = 0``: the episode ends).
    Returns ``(advantages, returns)`` with ``returns = advantages + values`` (the critic's target); both are
    ``(B, T)`` and 0 where masked. Computed without gradient: both are targets.
    """
    check_same_shape(rewards=rewards, values=values, mask=mask)
    with torch.no_grad():
        live = mask.bool()
        advantages = torch.zeros_like(values)
        next_value = values.new_zeros(values.size(0))  # (B,) value of the next generated token
        next_adv = values.new_zeros(values.size(0))  # (B,) its advantage
        for t in reversed(range(values.size(1))):
            delta = rewards[:, t] + gamma * next_value - values[:, t]  # (B,)
            adv = delta + gamma * lam * next_adv
            advantages[:, t] = torch.where(live[:, t], adv, 0.0)
            next_value = torch.where(live[:, t], values[:, t], next_value)
            next_adv = torch.where(live[:, t], adv, next_adv)
        returns = (advantages + values) * mask
    return advantages, returns


def policy_loss(
    logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor, clip_eps: float = 0.2
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped surrogate (Schulman et al. 2017, Eq. 7), token-mean over generated tokens.

    ``-min(rho A, clip(rho, 1 - eps, 1 + eps) A)`` with ``rho = exp(log pi - log pi_old)``.
    Metrics: ``clipfrac`` (share of tokens where the clipped term was chosen), ``approx_kl``
    (``mean((log pi_old - log pi)^2) / 2``, how far the policy moved since sampling), ``ratio`` (mean rho).
    """
    check_same_shape(logps=logps, old_logps=old_logps, advantages=advantages, mask=mask)
    log_ratio = logps - old_logps  # (B, T)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps)
    loss = masked_mean(torch.max(unclipped, clipped), mask)
    metrics = {
        "clipfrac": masked_mean((clipped > unclipped).float(), mask).detach(),
        "approx_kl": masked_mean(0.5 * log_ratio.detach() ** 2, mask),
        "ratio": masked_mean(ratio.detach(), mask),
    }
    return loss, metrics


def value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip_range: float | None = 0.2
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped value loss ``0.5 * max((V - R)^2, (V_clip - R)^2)``, token-mean over generated tokens.

    ``V_clip = old_V + clamp(V - old_V, -c, c)`` keeps the critic near the values used to compute the
    advantages (as in OpenAI baselines' PPO2 and TRL); ``clip_range=None`` gives the plain squared error.
    Metric ``vf_clipfrac``: share of tokens where the clipped error was larger.
    """
    check_same_shape(values=values, old_values=old_values, returns=returns, mask=mask)
    plain = (values - returns) ** 2  # (B, T)
    if clip_range is None:
        return 0.5 * masked_mean(plain, mask), {"vf_clipfrac": plain.new_zeros(())}
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(plain, clipped), mask)
    return loss, {"vf_clipfrac": masked_mean((clipped > plain).float(), mask).detach()}
