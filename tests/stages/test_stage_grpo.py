"""GRPO advantages and clipped loss against small hand-computed examples."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from tunelab.stages.grpo import group_advantages, grpo_loss


def test_group_advantages_hand_computed() -> None:
    # Group 1: rewards 1, 0, 2 -> mean 1, unbiased std sqrt((0 + 1 + 1) / 2) = 1.
    # Group 2: all equal -> advantage 0 (no signal), not NaN.
    rewards = torch.tensor([1.0, 0.0, 2.0, 3.0, 3.0, 3.0])
    assert_close(group_advantages(rewards, 3), torch.tensor([0.0, -1.0, 1.0, 0.0, 0.0, 0.0]) / (1 + 1e-4))
    assert_close(group_advantages(rewards, 3, scale=False), torch.tensor([0.0, -1.0, 1.0, 0.0, 0.0, 0.0]))
    # Group of 2: rewards 0 and 4 -> std sqrt(8) -> +-2 / sqrt(8)
    assert_close(group_advantages(torch.tensor([0.0, 4.0]), 2, eps=0.0), torch.tensor([-1.0, 1.0]) / math.sqrt(2))


def test_group_advantages_errors() -> None:
    with pytest.raises(ValueError, match=r"group_size=4 must be >= 2 and divide the number of completions \(6\)"):
        group_advantages(torch.zeros(6), 4)
    with pytest.raises(ValueError, match="rewards must be 1-D"):
        group_advantages(torch.zeros(2, 3), 3)


# Two completions of two tokens, sampled with old log-probs 0:
#   row 0: A = +1, ratios 1.5 (clipped to 1.2) and 0.9 -> per-token -1.2, -0.9
#   row 1: A = -1, ratios 0.5 (clipped to 0.8) and 1.1 (masked out) -> per-token 0.8
LOGPS = torch.log(torch.tensor([[1.5, 0.9], [0.5, 1.1]]))
ADV = torch.tensor([1.0, -1.0])
MASK = torch.tensor([[1, 1], [1, 0]])


@pytest.mark.parametrize(("reduction", "expected"), [
    ("sequence", ((-1.2 - 0.9) / 2 + 0.8) / 2),  # GRPO: mean of per-completion token means
    ("token", (-1.2 - 0.9 + 0.8) / 3),  # DAPO: over all 3 tokens
    ("dr_grpo", (-1.2 - 0.9 + 0.8) / 4),  # Dr. GRPO: over rows x padded length
])
def test_clipped_loss_hand_computed(reduction: str, expected: float) -> None:
    loss, metrics = grpo_loss(LOGPS, ADV, MASK, old_logps=torch.zeros(2, 2), beta=0.0, reduction=reduction)
    assert loss.item() == pytest.approx(expected)
    assert metrics["clip_ratio"].item() == pytest.approx(2 / 3)


def test_kl_term_adds_beta_times_k3() -> None:
    # ref = logps + ln 2 on every token -> k3 = exp(ln 2) - ln 2 - 1 = 1 - ln 2
    k3 = 1 - math.log(2)
    loss, metrics = grpo_loss(LOGPS, ADV, MASK, old_logps=torch.zeros(2, 2), ref_logps=LOGPS + math.log(2),
                              beta=0.1, reduction="sequence")
    assert loss.item() == pytest.approx(((-1.2 - 0.9) / 2 + 0.8) / 2 + 0.1 * k3)
    assert metrics["kl"].item() == pytest.approx(k3)


def test_clip_higher_widens_the_upper_bound() -> None:
    # DAPO clip-higher: with eps_high 0.6 the 1.5 ratio is no longer clipped (row 0 token 0 -> -1.5)
    loss, _ = grpo_loss(LOGPS, ADV, MASK, old_logps=torch.zeros(2, 2), beta=0.0, clip_eps_high=0.6,
                        reduction="token")
    assert loss.item() == pytest.approx((-1.5 - 0.9 + 0.8) / 3)


def test_on_policy_gradient_is_advantage_weighted() -> None:
    logps = torch.tensor([[-1.0, -2.0], [-0.5, -0.7]], requires_grad=True)
    loss, _ = grpo_loss(logps, ADV, MASK, beta=0.0, reduction="sequence")
    loss.backward()
    assert loss.item() == pytest.approx(0.0)  # ratio 1: -(1 + (-1)) / 2
    # d/d logp of -A * ratio / n_tokens / n_rows
    assert_close(logps.grad, torch.tensor([[-1 / 4, -1 / 4], [1 / 2, 0.0]]))


def test_errors() -> None:
    with pytest.raises(ValueError, match="needs ref_logps when beta > 0"):
        grpo_loss(LOGPS, ADV, MASK)
    with pytest.raises(ValueError, match="unknown GRPO reduction 'tokens'; choose one of: dr_grpo, sequence, token"):
        grpo_loss(LOGPS, ADV, MASK, beta=0.0, reduction="tokens")
    with pytest.raises(ValueError, match=r"advantages must have shape \(2,\)"):
        grpo_loss(LOGPS, torch.zeros(2, 2), MASK, beta=0.0)
