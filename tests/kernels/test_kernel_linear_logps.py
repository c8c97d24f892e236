"""Chunked label log-probs from hidden states vs log-softmax of the full logits: values and all gradients."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tunelab.config.speed import SpeedCfg
from tunelab.data.stage_formats import load_preference
from tunelab.data.templates import resolve_template
from tunelab.kernels.linear_logps import chunk_tokens, linear_sequence_logps, linear_token_logps
from tunelab.models import load_model, load_tokenizer
from tunelab.training.common import sequence_logps
from tunelab.stages.preference import PreferenceParams, answer_logps, pair_step
from tunelab.training.pairs import collate_pairs, pair_samples
from tunelab.training.reference import Reference


def _inputs(n=37, h=16, v=50, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g, dtype=torch.float64).requires_grad_()
    weight = torch.randn(v, h, generator=g, dtype=torch.float64).requires_grad_()
    b = torch.randn(v, generator=g, dtype=torch.float64).requires_grad_() if bias else None
    labels = torch.randint(0, v, (n,), generator=g)
    labels[::5] = -100
    return hidden, weight, b, labels


def _full(hidden, weight, bias, labels):
    """Reference: log_softmax over the whole (N, V) logits, gathered at the labels, 0 where ignored."""
    logps = F.log_softmax(F.linear(hidden, weight, bias), dim=-1)
    valid = labels != -100
    return logps.gather(-1, labels.clamp(min=0)[:, None]).squeeze(-1) * valid


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_token_logps_and_gradients_equal_the_full_logits(bias: bool, chunk: int) -> None:
    hidden, weight, b, labels = _inputs(bias=bias)
    got = linear_token_logps(hidden, weight, labels, b, chunk_size=chunk)
    ref = _full(hidden, weight, b, labels)
    torch.testing.assert_close(got, ref)
    assert (got[labels == -100] == 0).all()
    upstream = torch.randn(got.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    params = [t for t in (hidden, weight, b) if t is not None]
    for g_got, g_ref in zip(torch.autograd.grad((got * upstream).sum(), params),
                            torch.autograd.grad((ref * upstream).sum(), params)):
        torch.testing.assert_close(g_got, g_ref)


def test_frozen_weight_gets_no_grad_and_sequences_match_sequence_logps() -> None:
    hidden, weight, _, labels = _inputs(n=24, bias=False)
    weight = weight.detach()
    h3, y3 = hidden.view(2, 12, -1), labels.view(2, 12)
    got = linear_sequence_logps(h3, weight, y3, chunk_size=5)  # (2,)
    ref = sequence_logps(F.linear(h3, weight), y3)
    torch.testing.assert_close(got, ref)
    (grad,) = torch.autograd.grad(got.sum(), [hidden])
    (grad_ref,) = torch.autograd.grad(ref.sum(), [hidden])
    torch.testing.assert_close(grad, grad_ref)
    with pytest.raises(ValueError, match="disagree on the token dims"):
        linear_token_logps(h3, weight, y3.view(-1))


def test_chunk_size_is_a_power_of_two_within_budget() -> None:
    assert chunk_tokens(49152) == 256  # 2**24 logits: 341 tokens -> 256
    assert chunk_tokens(10**9) == 16
    assert chunk_tokens(50, budget_elems=50 * 100) == 64


@pytest.fixture(scope="module")
def lora_batch(shared_data: Path, tmp_path_factory):
    """tiny-llama with a LoRA adapter whose B matrices are non-zero, and a batch of 3 real preference pairs."""
    from tunelab.config.methods import LoraCfg
    from tunelab.methods import get_method

    torch.manual_seed(0)
    model = load_model("tiny-llama").double()
    model = get_method("lora").apply(model, LoraCfg(r=4, alpha=8, dropout=0.0))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    tok = load_tokenizer("tiny-llama")
    records = json.loads((shared_data / "llamafactory_demo" / "dpo_en_demo.json").read_text(encoding="utf-8"))[:3]
    path = tmp_path_factory.mktemp("pairs") / "pairs.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    samples = pair_samples(load_preference(path), tok, resolve_template(tok, None), 40)
    return model, collate_pairs(samples, tok.pad_token_id)


def test_dpo_step_is_the_same_with_and_without_chunked_logps(lora_batch) -> None:
    model, batch = lora_batch
    chunked, plain = SpeedCfg(chunked_ce=True, ce_chunk=16), SpeedCfg(chunked_ce=False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    results = []
    for speed in (chunked, plain):
        reference = Reference(model)
        loss, n, metrics = pair_step(model, batch, "sigmoid", PreferenceParams(beta=0.1), reference, speed)
        results.append((loss, metrics, torch.autograd.grad(loss, trainable)))
    (loss_c, m_c, g_c), (loss_p, m_p, g_p) = results
    assert loss_c.item() != pytest.approx(3 * 0.693147, abs=1e-3)  # the adapter moved the policy off the reference
    torch.testing.assert_close(loss_c, loss_p)
    for key in ("rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected"):
        torch.testing.assert_close(m_c[key], m_p[key])
    for a, b in zip(g_c, g_p):
        torch.testing.assert_close(a, b)
    with torch.no_grad(), model.disable_adapter():  # the reference path equals the base model's full logits
        ref_full = sequence_logps(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                                  batch["labels"])
        ref_chunked = answer_logps(model, batch, chunked)
    torch.testing.assert_close(ref_chunked, ref_full)
