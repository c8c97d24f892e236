"""Preference losses against TRL's own implementations on the same log-probs, plus hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close
from tests.stages.trl_oracle import trl_dpo, trl_kto, trl_orpo, trl_simpo

from tunelab.stages.preference import (
    PREFERENCE_LOSSES,
    REFERENCE_FREE,
    PreferenceLogps,
    PreferenceParams,
    preference_loss,
)

B, T = 6, 10  # pairs per batch, tokens per row (prompt + completion + padding)


def completion_batch(rows: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random completions: ``completion_mask`` (rows, T) after a prompt of >= 1 token, and per-token log-probs
    (rows, T-1) aligned with ``completion_mask[:, 1:]`` (0 off the completion), as a causal LM gives them."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.zeros(rows, T, dtype=torch.long)
    for row in range(rows):
        start = int(torch.randint(1, 4, (1,), generator=gen))
        length = int(torch.randint(1, T - start + 1, (1,), generator=gen))
        mask[row, start:start + length] = 1
    per_token = -3 * torch.rand(rows, T - 1, generator=gen, dtype=torch.float64) * mask[:, 1:]
    return mask, per_token


def as_logps(per_token: torch.Tensor, mask: torch.Tensor, ref: torch.Tensor) -> PreferenceLogps:
    """Split a TRL-layout batch ``[chosen..., rejected...]`` into tunelab's PreferenceLogps."""
    sums, tokens = per_token.sum(-1), mask[:, 1:].sum(-1)
    (chosen, rejected), (n_chosen, n_rejected), (ref_chosen, ref_rejected) = sums.chunk(2), tokens.chunk(2), ref.chunk(2)
    return PreferenceLogps(chosen=chosen, rejected=rejected, chosen_tokens=n_chosen, rejected_tokens=n_rejected,
                           ref_chosen=ref_chosen, ref_rejected=ref_rejected)


def assert_metrics_match(ours: dict[str, torch.Tensor], theirs: dict[str, float], keys: list[str]) -> None:
    for key in keys:
        assert_close(ours[key].double(), torch.tensor(theirs[key], dtype=torch.float64), msg=key)


REWARD_KEYS = ["rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
               "logps/chosen", "logps/rejected"]


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge"])
@pytest.mark.parametrize("beta", [0.1, 0.7])
def test_dpo_losses_match_trl(loss_type: str, beta: float) -> None:
    mask, per_token = completion_batch(2 * B, seed=1)
    ref = -3 * torch.rand(2 * B, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * mask[:, 1:].sum(-1)
    mine = per_token.clone().requires_grad_(True)
    theirs = per_token.clone().requires_grad_(True)

    loss, metrics = PREFERENCE_LOSSES[loss_type](as_logps(mine, mask, ref), PreferenceParams(beta=beta))
    trl_loss, trl_metrics = trl_dpo(loss_type, theirs, ref, mask, beta=beta)

    assert_close(loss, trl_loss)
    assert_metrics_match(metrics, trl_metrics, REWARD_KEYS)
    loss.backward()
    trl_loss.backward()
    assert_close(mine.grad, theirs.grad)  # same gradient on every token's log-prob


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge"])
def test_dpo_sft_term_matches_trl(loss_type: str) -> None:
    """preference.sft_weight (RPO) equals TRL's loss_type=[loss, "sft"] with loss_weights=[1, w]."""
    mask, per_token = completion_batch(2 * B, seed=3)
    ref = -3 * torch.rand(2 * B, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * mask[:, 1:].sum(-1)
    mine = per_token.clone().requires_grad_(True)
    theirs = per_token.clone().requires_grad_(True)

    params = PreferenceParams(beta=0.1, sft_weight=0.5)
    loss, metrics = preference_loss(loss_type, as_logps(mine, mask, ref), params)
    trl_loss, _ = trl_dpo(loss_type, theirs, ref, mask, beta=0.1, sft_weight=0.5)
    plain, _ = preference_loss(loss_type, as_logps(per_token, mask, ref), PreferenceParams(beta=0.1))

    assert_close(loss, trl_loss)
    assert not torch.allclose(loss, plain)  # the term is really there
    chosen_mask = mask[:B, 1:].bool()
    assert_close(metrics["nll_loss"], -per_token[:B][chosen_mask].mean())
    loss.backward()
    trl_loss.backward()
    on_completion = mask[:, 1:].to(per_token.dtype)  # off the completion the fixture's log-probs are constant 0
    assert_close(mine.grad * on_completion, theirs.grad * on_completion)


def test_kto_matches_trl_unpaired_and_weighted() -> None:
    rows = 7
    mask, per_token = completion_batch(rows, seed=3)
    _, kl_per_token = completion_batch(rows, seed=4)
    gen = torch.Generator().manual_seed(5)
    ref = -3 * torch.rand(rows, generator=gen, dtype=torch.float64) * mask[:, 1:].sum(-1)
    ref_kl = kl_per_token.sum(-1) - 2.0 * torch.rand(rows, generator=gen, dtype=torch.float64)  # KL estimate > 0
    labels = torch.tensor([True, False, True, True, False, True, True])  # 5 desirable, 2 undesirable
    params = PreferenceParams(beta=0.3, desirable_weight=1.0, undesirable_weight=2.5)

    sums = per_token.sum(-1)
    logps = PreferenceLogps(chosen=sums[labels], rejected=sums[~labels], ref_chosen=ref[labels],
                            ref_rejected=ref[~labels], kl=kl_per_token.sum(-1), ref_kl=ref_kl)
    loss, metrics = PREFERENCE_LOSSES["kto"](logps, params)
    trl_loss, trl_metrics = trl_kto(per_token, ref, labels, kl_per_token, ref_kl, beta=0.3, desirable_weight=1.0,
                                    undesirable_weight=2.5)

    assert metrics["kl"] > 0  # the clamp did not hide the comparison
    assert_close(loss, trl_loss)
    assert_metrics_match(metrics, trl_metrics, ["kl", "rewards/chosen", "rewards/rejected", "rewards/margins",
                                                "logps/chosen", "logps/rejected"])


def test_kto_hand_computed_without_kl_batch() -> None:
    # z0 = 0 without kl tensors. One desirable example with log-ratio 2, one undesirable with log-ratio 1, beta 0.5:
    # losses 1 - s(1) and 1 - s(-0.5); mean of the two.
    logps = PreferenceLogps(chosen=torch.tensor([-3.0]), rejected=torch.tensor([-4.0]),
                            ref_chosen=torch.tensor([-5.0]), ref_rejected=torch.tensor([-5.0]))
    loss, metrics = PREFERENCE_LOSSES["kto"](logps, PreferenceParams(beta=0.5))
    sigmoid = lambda x: 1 / (1 + math.exp(-x))
    assert loss.item() == pytest.approx(((1 - sigmoid(1.0)) + (1 - sigmoid(-0.5))) / 2)
    assert metrics["rewards/margins"].item() == pytest.approx(1.0 - 0.5)


def test_kto_one_sided_batch_skips_margin() -> None:
    logps = PreferenceLogps(chosen=torch.tensor([-3.0, -2.0]), rejected=torch.empty(0),
                            ref_chosen=torch.tensor([-3.0, -2.0]), ref_rejected=torch.empty(0))
    loss, metrics = PREFERENCE_LOSSES["kto"](logps, PreferenceParams())
    assert loss.item() == pytest.approx(0.5)  # log-ratio 0 -> 1 - sigmoid(0)
    assert "rewards/margins" not in metrics and "rewards/rejected" not in metrics


def test_orpo_matches_trl() -> None:
    mask, per_token = completion_batch(2 * B, seed=6)
    per_token = per_token.float()  # TRL's odds_ratio_loss computes in float32
    logps = as_logps(per_token, mask, torch.zeros(2 * B))
    loss, metrics = PREFERENCE_LOSSES["orpo"](logps, PreferenceParams(beta=0.25))

    avg_chosen = logps.chosen / logps.chosen_tokens
    avg_rejected = logps.rejected / logps.rejected_tokens
    # TRL computes its NLL term in concatenated_forward from logits; the odds-ratio part and the combination
    # `nll - losses.mean()` run in TRL's get_batch_loss_metrics. We hand it tunelab's NLL (token-mean over chosen).
    nll = -logps.chosen.sum() / logps.chosen_tokens.sum()
    trl_loss, trl_metrics = trl_orpo(avg_chosen, avg_rejected, nll, beta=0.25)

    assert_close(loss, trl_loss)
    assert_metrics_match(metrics, trl_metrics, REWARD_KEYS + ["nll_loss", "log_odds_ratio", "log_odds_chosen"])
    assert metrics["nll_loss"].item() == pytest.approx(-(per_token[:B].sum() / mask[:B, 1:].sum()).item())


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_simpo_matches_trl(label_smoothing: float) -> None:
    mask, per_token = completion_batch(2 * B, seed=7)
    logps = as_logps(per_token, mask, torch.zeros(2 * B, dtype=torch.float64))
    params = PreferenceParams(beta=2.0, gamma=0.8, label_smoothing=label_smoothing)
    loss, metrics = PREFERENCE_LOSSES["simpo"](logps, params)
    trl_loss, trl_metrics = trl_simpo(logps.chosen / logps.chosen_tokens, logps.rejected / logps.rejected_tokens,
                                      beta=2.0, gamma=0.8, label_smoothing=label_smoothing)
    assert_close(loss, trl_loss)
    assert_metrics_match(metrics, trl_metrics, REWARD_KEYS)


def test_dpo_hand_computed() -> None:
    # Log-ratios: chosen -1 - (-2) = 1, rejected -3 - (-2) = -1; beta 0.5 -> logit 1.
    logps = PreferenceLogps(chosen=torch.tensor([-1.0]), rejected=torch.tensor([-3.0]),
                            ref_chosen=torch.tensor([-2.0]), ref_rejected=torch.tensor([-2.0]),
                            chosen_tokens=torch.tensor([2]), rejected_tokens=torch.tensor([4]))
    params = PreferenceParams(beta=0.5, label_smoothing=0.2)
    loss, metrics = PREFERENCE_LOSSES["sigmoid"](logps, params)
    log_s = lambda x: -math.log1p(math.exp(-x))
    assert loss.item() == pytest.approx(-(0.8 * log_s(1.0) + 0.2 * log_s(-1.0)))  # conservative DPO
    assert metrics["rewards/margins"].item() == pytest.approx(1.0)
    assert metrics["rewards/accuracies"].item() == 1.0
    hinge, _ = PREFERENCE_LOSSES["hinge"](logps, params)
    assert hinge.item() == pytest.approx(0.0)  # beta * margin = 1 reaches the hinge
    ipo, _ = PREFERENCE_LOSSES["ipo"](logps, params)
    assert ipo.item() == pytest.approx((1 / 2 - (-1) / 4 - 1 / (2 * 0.5)) ** 2)  # per-token averaged log-ratios


def test_losses_push_chosen_up_and_rejected_down() -> None:
    for name in PREFERENCE_LOSSES:
        chosen = torch.tensor([-4.0, -6.0], requires_grad=True)
        rejected = torch.tensor([-5.0, -5.0], requires_grad=True)
        logps = PreferenceLogps(chosen=chosen, rejected=rejected, chosen_tokens=torch.tensor([4, 6]),
                                rejected_tokens=torch.tensor([5, 5]), ref_chosen=torch.tensor([-5.0, -5.0]),
                                ref_rejected=torch.tensor([-5.0, -5.0]))
        loss, _ = PREFERENCE_LOSSES[name](logps, PreferenceParams(beta=0.1))
        loss.backward()
        assert torch.isfinite(loss)
        assert (chosen.grad < 0).all(), name  # descending the loss raises log pi(chosen)
        assert (rejected.grad > 0).all(), name  # ... and lowers log pi(rejected)


def test_reference_free_losses_ignore_reference() -> None:
    base = {"chosen": torch.tensor([-4.0]), "rejected": torch.tensor([-5.0]), "chosen_tokens": torch.tensor([4]),
            "rejected_tokens": torch.tensor([5])}
    for name in REFERENCE_FREE:
        without, _ = PREFERENCE_LOSSES[name](PreferenceLogps(**base), PreferenceParams())
        with_ref, _ = PREFERENCE_LOSSES[name](
            PreferenceLogps(**base, ref_chosen=torch.tensor([-1.0]), ref_rejected=torch.tensor([-9.0])),
            PreferenceParams())
        assert_close(without, with_ref)


def test_errors_name_the_missing_piece() -> None:
    no_ref = PreferenceLogps(chosen=torch.tensor([-1.0]), rejected=torch.tensor([-2.0]))
    with pytest.raises(ValueError, match=r"'sigmoid' needs PreferenceLogps\.ref_chosen, \.ref_rejected"):
        PREFERENCE_LOSSES["sigmoid"](no_ref, PreferenceParams())
    with pytest.raises(ValueError, match=r"'simpo' needs PreferenceLogps\.chosen_tokens"):
        PREFERENCE_LOSSES["simpo"](no_ref, PreferenceParams())
    with pytest.raises(ValueError, match=r"unknown preference loss 'dpo2'; choose one of: .*sigmoid"):
        preference_loss("dpo2", no_ref, PreferenceParams())
    mismatched = PreferenceLogps(chosen=torch.zeros(2), rejected=torch.zeros(3), ref_chosen=torch.zeros(2),
                                 ref_rejected=torch.zeros(3))
    with pytest.raises(ValueError, match=r"shape mismatch: chosen \(2,\), rejected \(3,\)"):
        PREFERENCE_LOSSES["sigmoid"](mismatched, PreferenceParams())
    with pytest.raises(ValueError, match="needs both PreferenceLogps.kl and .ref_kl"):
        PREFERENCE_LOSSES["kto"](PreferenceLogps(chosen=torch.zeros(1), rejected=torch.zeros(1),
                                                 ref_chosen=torch.zeros(1), ref_rejected=torch.zeros(1),
                                                 kl=torch.zeros(2)), PreferenceParams())
