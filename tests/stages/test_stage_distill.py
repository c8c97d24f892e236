"""Distillation divergences against direct torch computations and TRL's generalized JSD."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import tests.stages.trl_oracle  # noqa: F401  (silences TRL's experimental-import warning)
from torch.testing import assert_close

from tunelab.stages.distill import distill_loss


@pytest.fixture()
def batch():
    gen = torch.Generator().manual_seed(0)
    student = torch.randn(2, 6, 11, generator=gen)
    teacher = 2 * torch.randn(2, 6, 11, generator=gen)
    labels = torch.randint(0, 11, (2, 6), generator=gen)
    labels[0, :2] = -100
    labels[1, 4:] = -100
    return student, teacher, labels


def direct_kl(p_logits: torch.Tensor, q_logits: torch.Tensor, labels: torch.Tensor, temperature: float):
    """Token-mean KL(p || q) over target positions, via F.kl_div on the softmaxes (independent of distill.py)."""
    p = torch.softmax(p_logits[:, :-1] / temperature, -1)
    q = torch.softmax(q_logits[:, :-1] / temperature, -1)
    per_token = F.kl_div(q.log(), p, reduction="none").sum(-1)  # sum_v p (log p - log q)
    mask = labels[:, 1:] != -100
    return per_token[mask].mean()


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_forward_and_reverse_kl_match_direct_computation(batch, temperature: float) -> None:
    student, teacher, labels = batch
    forward, metrics = distill_loss(student, teacher, labels, temperature=temperature, alpha=1.0)
    assert_close(forward, temperature**2 * direct_kl(teacher, student, labels, temperature))
    assert_close(metrics["divergence"], direct_kl(teacher, student, labels, temperature))
    reverse, _ = distill_loss(student, teacher, labels, temperature=temperature, alpha=1.0, divergence="reverse")
    assert_close(reverse, temperature**2 * direct_kl(student, teacher, labels, temperature))


def test_alpha_mixes_in_hard_label_cross_entropy(batch) -> None:
    student, teacher, labels = batch
    ce = F.cross_entropy(student[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1), ignore_index=-100)
    hard, metrics = distill_loss(student, teacher, labels, alpha=0.0)
    assert_close(hard, ce)
    mixed, _ = distill_loss(student, teacher, labels, temperature=2.0, alpha=0.3)
    assert_close(mixed, 0.3 * 4.0 * metrics["divergence"] + 0.7 * ce)


def test_jsd_matches_trl_gkd(batch) -> None:
    # trl/experimental/gkd/gkd_trainer.py, GKDTrainer.generalized_jsd_loss (static): token mean, no T^2 factor
    from trl.experimental.gkd import GKDTrainer

    student, teacher, labels = batch
    _, metrics = distill_loss(student, teacher, labels, temperature=1.5, alpha=1.0, divergence="jsd", jsd_beta=0.3)
    theirs = GKDTrainer.generalized_jsd_loss(student[:, :-1], teacher[:, :-1], labels=labels[:, 1:], beta=0.3,
                                             temperature=1.5)
    assert_close(metrics["divergence"], theirs)


@pytest.mark.parametrize("divergence", ["forward", "reverse", "jsd"])
def test_identical_teacher_gives_zero_and_finite_gradient(batch, divergence: str) -> None:
    student, teacher, labels = batch
    same, _ = distill_loss(student, student.clone(), labels, alpha=1.0, divergence=divergence)
    assert same.item() == pytest.approx(0.0, abs=1e-6)
    student = student.clone().requires_grad_(True)
    loss, _ = distill_loss(student, teacher, labels, alpha=0.5, divergence=divergence)
    loss.backward()
    assert loss.item() > 0
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0
    assert student.grad[:, -1].abs().sum() == 0  # the last position has no target


def test_errors(batch) -> None:
    student, teacher, labels = batch
    with pytest.raises(ValueError, match="needs the same tokenizer"):
        distill_loss(student, teacher[..., :5], labels)
    with pytest.raises(ValueError, match="unknown distillation divergence 'kl'; choose one of: forward, jsd, reverse"):
        distill_loss(student, teacher, labels, divergence="kl")
    with pytest.raises(ValueError, match=r"jsd beta must be in \(0, 1\)"):
        distill_loss(student, teacher, labels, divergence="jsd", jsd_beta=1.0)
