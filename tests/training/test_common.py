"""sequence_logps / token_logps against a manual loop on a tiny model's real logits, and TRL's get_batch_logps."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close
from tests.stages.trl_oracle import trl_batch_logps

from tunelab.training.common import KL_ESTIMATORS, masked_mean, masked_whiten, sequence_logps, target_counts, token_logps


@pytest.fixture()
def logits_and_labels(tiny_llama):
    gen = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, tiny_llama.config.vocab_size, (3, 12), generator=gen)
    with torch.no_grad():
        logits = tiny_llama(input_ids=input_ids).logits  # (3, 12, V)
    labels = input_ids.clone()
    labels[0, :4] = -100  # prompt
    labels[1, :2] = -100
    labels[1, 9:] = -100  # right padding
    labels[2, :] = -100  # no targets at all
    return logits, labels


def manual_logps(logits: torch.Tensor, labels: torch.Tensor, average: bool) -> torch.Tensor:
    out = []
    for b in range(labels.size(0)):
        total, count = 0.0, 0
        for t in range(1, labels.size(1)):
            if labels[b, t] != -100:
                total += torch.log_softmax(logits[b, t - 1].double(), dim=-1)[labels[b, t]].item()
                count += 1
        out.append(total / max(count, 1) if average else total)
    return torch.tensor(out, dtype=torch.float32)


@pytest.mark.parametrize("average", [False, True])
def test_sequence_logps_matches_manual_loop(logits_and_labels, average: bool) -> None:
    logits, labels = logits_and_labels
    result = sequence_logps(logits, labels, average=average)
    assert result.shape == (3,)
    assert_close(result, manual_logps(logits, labels, average), rtol=1e-5, atol=1e-5)
    assert result[2].item() == 0.0  # a row without targets contributes nothing
    assert target_counts(labels).tolist() == [8, 7, 0]


@pytest.mark.parametrize("average", [False, True])
def test_sequence_logps_matches_trl(logits_and_labels, average: bool) -> None:
    logits, labels = logits_and_labels
    theirs = trl_batch_logps(logits[:2], labels[:2], average)
    assert_close(sequence_logps(logits[:2], labels[:2], average=average), theirs, rtol=1e-5, atol=1e-5)


def test_token_logps_carries_gradient_and_rejects_bad_shapes() -> None:
    logits = torch.randn(2, 5, 7, requires_grad=True)
    labels = torch.tensor([[-100, 1, 2, 3, -100], [-100, -100, 6, 0, 4]])
    logps, mask = token_logps(logits, labels)
    assert mask.tolist() == [[1, 1, 1, 0], [0, 1, 1, 1]]
    logps.sum().backward()
    assert logits.grad[:, -1].abs().sum() == 0  # the last position predicts nothing
    low = sequence_logps(logits.detach().bfloat16(), labels)
    assert low.dtype == torch.float32  # bf16 logits are scored in fp32
    assert_close(low, sequence_logps(logits.detach().bfloat16().float(), labels))
    assert sequence_logps(logits.detach().double(), labels).dtype == torch.float64
    with pytest.raises(ValueError, match=r"logits \(2, 5, 7\) and labels \(2, 4\) disagree"):
        token_logps(logits, labels[:, :4])


def test_masked_helpers_and_kl_estimators() -> None:
    values = torch.tensor([[1.0, 2.0, 100.0], [3.0, 100.0, 100.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert masked_mean(values, mask).item() == pytest.approx(2.0)
    assert_close(masked_mean(values, mask, dim=1), torch.tensor([1.5, 3.0]))
    assert masked_mean(values, torch.zeros_like(mask)).item() == 0.0
    white = masked_whiten(values, mask)
    assert masked_mean(white, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert masked_mean(white**2, mask).item() == pytest.approx(1.0, abs=1e-5)
    assert white[0, 2].item() == 0.0
    logp, ref = torch.tensor([-1.0]), torch.tensor([-1.0 - 0.5])  # log pi - log pi_ref = 0.5
    assert KL_ESTIMATORS["k1"](logp, ref).item() == pytest.approx(0.5)
    assert KL_ESTIMATORS["k2"](logp, ref).item() == pytest.approx(0.125)
    assert KL_ESTIMATORS["k3"](logp, ref).item() == pytest.approx(torch.exp(torch.tensor(-0.5)).item() - 1 + 0.5)
