"""Packing: best-fit decreasing, and packed == unpacked (loss and gradients) on tiny models."""

from __future__ import annotations

import pytest
import torch

from tunelab.data.formats import parse_records
from tunelab.data.io import read_records
from tunelab.data.packing import best_fit_decreasing, collate_packed, model_inputs, pack
from tunelab.data.pipeline import collate
from tunelab.data.templates import IGNORE_INDEX, resolve_template, tokenize_conversation
from tunelab.training.lm_loss import sft_loss

# fp32 on CPU: packed and padded runs differ only in summation order inside attention/matmuls.
ATOL = 1e-5


def test_best_fit_decreasing_hand_example():
    # sorted: 7(a) 6(b) 5(c) 4(d) 3(e) 2(f) with capacity 10:
    # 7->new[0], 6->new[1], 5->new[2], 4 -> best fit is bin 1 (room 4), 3 -> bin 0 (room 3), 2 -> bin 2 (room 5)
    bins = best_fit_decreasing([5, 7, 2, 4, 6, 3], 10)
    assert bins == [[1, 5], [4, 3], [0, 2]]
    with pytest.raises(ValueError, match="sample 1 has 12 tokens, more than the row length 10"):
        best_fit_decreasing([3, 12], 10)


def test_pack_keeps_every_token_and_masks_sample_starts(tiny_tokenizer, shared_data):
    samples = _samples(tiny_tokenizer, shared_data, 40, 96)
    rows = pack(samples, 256)
    assert sorted(n for r in rows for n in r.lengths) == sorted(len(s.input_ids) for s in samples)
    assert all(len(r.input_ids) == sum(r.lengths) <= 256 for r in rows)
    # targets lost are only those on a sample's first token (never a target: it is a prompt token)
    assert sum(r.n_targets for r in rows) == sum(s.n_targets for s in samples)
    for r in rows:
        start = 0
        for n in r.lengths:
            assert r.labels[start] == IGNORE_INDEX
            start += n
    batch = collate_packed(rows[:2], pad_id=0)
    width = batch["input_ids"].shape[1]
    assert batch["position_ids"][0, :rows[0].lengths[0]].tolist() == list(range(rows[0].lengths[0]))
    assert set(batch.keys()) == {"input_ids", "labels", "position_ids", "attention_mask"}
    assert int(batch["attention_mask"].sum()) == len(rows[0].input_ids) + len(rows[1].input_ids) <= 2 * width


def _samples(tok, shared_data, n, max_length):
    template = resolve_template(tok, None)
    convs, _ = parse_records(read_records(shared_data / "llamafactory_demo/alpaca_en_demo.json")[:n])
    return [tokenize_conversation(tok, template, c, max_length) for c in convs]


def _loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    loss_sum, count = sft_loss(model, batch)
    (loss_sum / count).backward()
    return float(loss_sum.detach()) / count, count, {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("model_name", ["tiny_llama", "tiny_qwen2"])
def test_packed_equals_unpacked_loss_and_gradients(model_name, request, tiny_tokenizer, shared_data):
    model = request.getfixturevalue(model_name)
    samples = _samples(tiny_tokenizer, shared_data, 8, 96)
    rows = pack(samples, 256)
    assert len(rows) < len(samples)  # several samples per row, or the test proves nothing
    ref_loss, ref_n, ref_grads = _loss_and_grads(model, collate(samples, tiny_tokenizer.pad_token_id))
    loss, n, grads = _loss_and_grads(model, collate_packed(rows, tiny_tokenizer.pad_token_id))
    assert n == ref_n
    assert loss == pytest.approx(ref_loss, abs=ATOL)
    for name, g in ref_grads.items():
        torch.testing.assert_close(grads[name], g, atol=ATOL, rtol=1e-4, msg=name)


def test_packing_without_position_ids_leaks_across_samples(tiny_llama, tiny_tokenizer, shared_data):
    """The reference check above can fail: plain causal attention over a packed row gives another loss."""
    samples = _samples(tiny_tokenizer, shared_data, 8, 96)
    batch = collate_packed(pack(samples, 256), tiny_tokenizer.pad_token_id)
    ref_loss, _, _ = _loss_and_grads(tiny_llama, collate(samples, tiny_tokenizer.pad_token_id))
    leaky = {"input_ids": batch["input_ids"], "attention_mask": torch.ones_like(batch["input_ids"]),
             "labels": batch["labels"]}
    loss, _, _ = _loss_and_grads(tiny_llama, leaky)
    assert abs(loss - ref_loss) > 1e-3


def test_packed_through_varlen_attention(tiny_llama, tiny_tokenizer, shared_data):
    """The speed path (kernels.varlen, registered as a transformers attention) gives the same loss on CPU."""
    from tunelab.kernels.varlen import register_hf_attention

    samples = _samples(tiny_tokenizer, shared_data, 8, 96)
    ref_loss, _, ref_grads = _loss_and_grads(tiny_llama, collate(samples, tiny_tokenizer.pad_token_id))
    tiny_llama.set_attn_implementation(register_hf_attention())
    batch = collate_packed(pack(samples, 256), tiny_tokenizer.pad_token_id)
    assert "attention_mask" not in model_inputs(batch)
    loss, _, grads = _loss_and_grads(tiny_llama, batch)
    assert loss == pytest.approx(ref_loss, abs=ATOL)
    torch.testing.assert_close(grads["model.embed_tokens.weight"], ref_grads["model.embed_tokens.weight"],
                               atol=ATOL, rtol=1e-4)


def test_plain_collate_refuses_packed_rows(tiny_tokenizer, shared_data):
    from tunelab.data.io import DataError

    rows = pack(_samples(tiny_tokenizer, shared_data, 8, 96), 256)
    with pytest.raises(DataError, match="this stage does not support data.packing"):
        collate(rows, pad_id=0)
