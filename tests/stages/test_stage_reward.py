"""Bradley-Terry reward loss against TRL's RewardTrainer.compute_loss, plus hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close
from tests.stages.trl_oracle import trl_reward

from tunelab.stages.reward import bradley_terry_loss, pair_accuracy


@pytest.mark.parametrize("with_margin", [False, True])
@pytest.mark.parametrize("center_coef", [None, 0.01])
def test_matches_trl(with_margin: bool, center_coef: float | None) -> None:
    gen = torch.Generator().manual_seed(0)
    chosen, rejected = torch.randn(8, generator=gen), torch.randn(8, generator=gen)
    margin = torch.rand(8, generator=gen) if with_margin else None
    loss, metrics = bradley_terry_loss(chosen, rejected, margin=margin, center_coef=center_coef)
    trl_loss, trl_metrics = trl_reward(chosen, rejected, margin, center_coef)
    assert_close(loss, trl_loss)
    for key in ["accuracy", "margin", "mean_reward", "min_reward", "max_reward"]:
        assert_close(metrics[key], torch.tensor(trl_metrics[key]), msg=key)


def test_hand_computed() -> None:
    loss, metrics = bradley_terry_loss(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0]),
                                       margin=torch.tensor([0.0, 1.0]))
    # pair 1: -log s(1); pair 2: -log s(0 - 0 - 1) = -log s(-1)
    expected = (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(1.0))) / 2
    assert loss.item() == pytest.approx(expected)
    assert metrics["accuracy"].item() == 0.5  # a tie is not a win
    assert pair_accuracy(torch.tensor([2.0, 1.0, 0.0]), torch.tensor([1.0, 2.0, -1.0])).item() == pytest.approx(2 / 3)


def test_gradient_separates_the_pair() -> None:
    chosen = torch.zeros(3, requires_grad=True)
    rejected = torch.zeros(3, requires_grad=True)
    bradley_terry_loss(chosen, rejected)[0].backward()
    assert_close(chosen.grad, torch.full((3,), -0.5 / 3))  # d/dx -log s(x) = -(1 - s(x)) = -0.5 at 0, mean over 3
    assert_close(rejected.grad, -chosen.grad)


def test_shape_mismatch_is_reported() -> None:
    with pytest.raises(ValueError, match=r"chosen_rewards \(2,\), rejected_rewards \(3,\)"):
        bradley_terry_loss(torch.zeros(2), torch.zeros(3))
