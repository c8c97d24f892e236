"""PPO pieces against hand-computed numbers and a plain reference loop."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from tunelab.stages.ppo import gae, kl_penalty, policy_loss, shaped_rewards, value_loss


def test_gae_hand_computed() -> None:
    # gamma 0.9, lambda 0.5, so gamma * lambda = 0.45.
    # Row 0 (3 tokens): deltas 0.7 (t2), 0 + 0.9*0.3 - 0.4 = -0.13 (t1), 0 + 0.9*0.4 - 0.5 = -0.14 (t0)
    #   A2 = 0.7, A1 = -0.13 + 0.45*0.7 = 0.185, A0 = -0.14 + 0.45*0.185 = -0.05675
    # Row 1 (right-padded, 2 tokens; the padded value 9 must not leak in):
    #   A1 = 2 - 0.5 = 1.5, A0 = 0.9*0.5 - 1.0 + 0.45*1.5 = 0.125
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 0.0]])
    values = torch.tensor([[0.5, 0.4, 0.3], [1.0, 0.5, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=0.5)
    assert_close(advantages, torch.tensor([[-0.05675, 0.185, 0.7], [0.125, 1.5, 0.0]]))
    assert_close(returns, torch.tensor([[0.44325, 0.585, 1.0], [1.125, 2.0, 0.0]]))


def reference_gae(rewards, values, mask, gamma, lam):
    """Textbook GAE, one sequence at a time over its generated positions only."""
    advantages = torch.zeros_like(values)
    for b in range(values.size(0)):
        positions = [t for t in range(values.size(1)) if mask[b, t]]
        running = 0.0
        for i in reversed(range(len(positions))):
            t = positions[i]
            next_value = values[b, positions[i + 1]].item() if i + 1 < len(positions) else 0.0
            delta = rewards[b, t].item() + gamma * next_value - values[b, t].item()
            running = delta + gamma * lam * running
            advantages[b, t] = running
    return advantages


def test_gae_matches_reference_loop_with_left_padding_and_holes() -> None:
    gen = torch.Generator().manual_seed(0)
    rewards, values = torch.randn(4, 9, generator=gen), torch.randn(4, 9, generator=gen)
    mask = torch.ones(4, 9, dtype=torch.long)
    mask[0, :3] = 0  # left padding
    mask[1, 6:] = 0  # right padding
    mask[2, 4] = 0  # a hole (e.g. a tool-output token that was not generated)
    mask[3] = 0  # nothing generated
    advantages, returns = gae(rewards, values, mask, gamma=0.97, lam=0.9)
    expected = reference_gae(rewards, values, mask, 0.97, 0.9)
    assert_close(advantages, expected)
    assert_close(returns, (expected + values) * mask)


def test_policy_loss_hand_computed() -> None:
    # ratios row 0: 1.5 (clipped to 1.2), 0.9; advantage +1 -> per-token -1.2, -0.9
    # ratios row 1: 0.5 (clipped to 0.8), [1.1 masked]; advantage -1 -> per-token 0.8
    logps = torch.log(torch.tensor([[1.5, 0.9], [0.5, 1.1]])).requires_grad_(True)
    advantages = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    loss, metrics = policy_loss(logps, torch.zeros(2, 2), advantages, mask, clip_eps=0.2)
    assert loss.item() == pytest.approx((-1.2 - 0.9 + 0.8) / 3)
    assert metrics["clipfrac"].item() == pytest.approx(2 / 3)
    loss.backward()
    # clipped tokens give no gradient; the unclipped one gives -A * ratio / n_tokens
    assert_close(logps.grad, torch.tensor([[0.0, -0.9 / 3], [0.0, 0.0]]))


def test_value_loss_hand_computed() -> None:
    values = torch.tensor([[1.0, 2.0]])
    old_values = torch.tensor([[0.5, 2.0]])
    returns = torch.tensor([[1.5, 0.0]])
    mask = torch.ones(1, 2)
    loss, metrics = value_loss(values, old_values, returns, mask, clip_range=0.2)
    # token 0: plain (1 - 1.5)^2 = 0.25, clipped value 0.7 -> 0.64; token 1: both 4
    assert loss.item() == pytest.approx(0.5 * (0.64 + 4.0) / 2)
    assert metrics["vf_clipfrac"].item() == pytest.approx(0.5)
    plain, _ = value_loss(values, old_values, returns, mask, clip_range=None)
    assert plain.item() == pytest.approx(0.5 * (0.25 + 4.0) / 2)


def test_shaped_rewards_and_kl_penalty() -> None:
    logps = torch.tensor([[-1.0, -1.0, -1.0], [-1.0, -1.0, -1.0]])
    ref = torch.tensor([[-1.1, -1.2, 0.0], [0.0, -1.3, -1.0]])
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]])  # right- and left-padded
    rewards = shaped_rewards(torch.tensor([2.0, -1.0]), logps, ref, mask, kl_coef=0.5, estimator="k1")
    assert_close(rewards, torch.tensor([[-0.05, -0.1 + 2.0, 0.0], [0.0, -0.15, 0.0 - 1.0]]))
    k3 = kl_penalty(logps, ref, mask, estimator="k3")
    assert k3[0, 0].item() == pytest.approx(math.exp(-0.1) + 0.1 - 1, rel=1e-4)  # float32
    assert k3[1, 0].item() == 0.0  # masked
    with pytest.raises(ValueError, match="unknown KL estimator 'k4'; choose one of: k1, k2, k3"):
        kl_penalty(logps, ref, mask, estimator="k4")
