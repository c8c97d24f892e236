"""Packed-batch attention: a row of 3 packed samples equals running each sample alone."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tunelab.kernels.varlen import (
    block_causal_mask,
    document_ids,
    packed_forward_kwargs,
    position_ids_from_lengths,
    register_hf_attention,
    varlen_attention,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
LENGTHS = [5, 9, 4]


def test_document_ids_and_mask_by_hand():
    pos = position_ids_from_lengths([[2, 3], [1, 4]])
    assert pos.tolist() == [[0, 1, 0, 1, 2], [0, 0, 1, 2, 3]]
    assert document_ids(pos).tolist() == [[0, 0, 1, 1, 1], [0, 1, 1, 1, 1]]
    mask = block_causal_mask(document_ids(pos))[0, 0].int().tolist()
    assert mask == [[1, 0, 0, 0, 0],
                    [1, 1, 0, 0, 0],
                    [0, 0, 1, 0, 0],
                    [0, 0, 1, 1, 0],
                    [0, 0, 1, 1, 1]]


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="same total length"):
        position_ids_from_lengths([[2, 3], [4]])
    with pytest.raises(ValueError, match=r"position_ids must be \(batch, seq\)"):
        document_ids(torch.arange(4))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_packed_equals_each_sample_alone(device, kv_heads):
    torch.manual_seed(0)
    dtype = torch.float64 if device == "cpu" else torch.float32
    t, d = sum(LENGTHS), 16
    q = torch.randn(1, 4, t, d, device=device, dtype=dtype, requires_grad=True)
    k = torch.randn(1, kv_heads, t, d, device=device, dtype=dtype, requires_grad=True)
    v = torch.randn(1, kv_heads, t, d, device=device, dtype=dtype, requires_grad=True)
    doc = document_ids(position_ids_from_lengths([LENGTHS], device))
    out = varlen_attention(q, k, v, doc)
    gy = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), gy)
    start = 0
    for n in LENGTHS:
        sl = slice(start, start + n)
        qs, ks, vs = (x[:, :, sl].detach().requires_grad_() for x in (q, k, v))
        rep = 4 // kv_heads
        ref = F.scaled_dot_product_attention(qs, ks.repeat_interleave(rep, 1), vs.repeat_interleave(rep, 1),
                                             is_causal=True)
        torch.testing.assert_close(out[:, :, sl], ref, rtol=1e-4, atol=1e-5)
        for g, g_ref in zip(grads, torch.autograd.grad(ref, (qs, ks, vs), gy[:, :, sl])):
            torch.testing.assert_close(g[:, :, sl], g_ref, rtol=1e-4, atol=1e-5)
        start += n


@pytest.mark.parametrize("device", DEVICES)
def test_hf_model_packed_logits_match_separate_samples(device):
    from tunelab.models import load_model

    name = register_hf_attention()
    model = load_model("tiny-qwen2").to(device=device, dtype=torch.float32).eval()
    torch.manual_seed(0)
    samples = [torch.randint(0, 1000, (n,), device=device) for n in LENGTHS]
    with torch.no_grad():
        alone = [model(input_ids=s[None]).logits[0] for s in samples]            # eager/sdpa, causal
        model.set_attn_implementation(name)
        pos = position_ids_from_lengths([LENGTHS], device)
        packed = model(input_ids=torch.cat(samples)[None], **packed_forward_kwargs(pos)).logits[0]
        unpacked_wrong = model(input_ids=torch.cat(samples)[None]).logits[0]   # no positions: leaks
    torch.testing.assert_close(packed, torch.cat(alone), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(unpacked_wrong[LENGTHS[0]:], torch.cat(alone[1:]), atol=1e-3)


def test_hf_attention_rejects_what_it_cannot_do():
    from tunelab.kernels.varlen import hf_attention_forward

    q = torch.randn(1, 2, 4, 8)
    with pytest.raises(ValueError, match="no sliding window"):
        hf_attention_forward(torch.nn.Module(), q, q, q, None, sliding_window=2)
    with pytest.raises(ValueError, match="set attention_dropout=0"):
        hf_attention_forward(torch.nn.Module(), q, q, q, None, dropout=0.1)
    out, weights = hf_attention_forward(torch.nn.Module(), q, q, q, None)   # no positions: plain causal
    assert weights is None
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, q, q, is_causal=True).transpose(1, 2))
