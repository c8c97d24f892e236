"""Chunked linear + cross-entropy vs plain `F.linear` + `F.cross_entropy`: loss and all gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tunelab.kernels.linear_ce import (
    CPU_CHUNK_ELEMS,
    _ce_chunk,
    _ce_target_rows,
    default_chunk_size,
    linear_cross_entropy,
    shift_labels,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _inputs(device, n=37, h=16, v=50, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g, dtype=torch.float64).to(device).requires_grad_()
    weight = torch.randn(v, h, generator=g, dtype=torch.float64).to(device).requires_grad_()
    b = torch.randn(v, generator=g, dtype=torch.float64).to(device).requires_grad_() if bias else None
    labels = torch.randint(0, v, (n,), generator=g).to(device)
    labels[::5] = -100
    return hidden, weight, b, labels


def _grads(loss, *ts):
    return torch.autograd.grad(loss, [t for t in ts if t is not None])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("chunk", [1, 8, 64])
def test_matches_cross_entropy(device, smoothing, chunk):
    hidden, weight, bias, labels = _inputs(device)
    ref = F.cross_entropy(F.linear(hidden, weight, bias), labels, ignore_index=-100,
                          label_smoothing=smoothing, reduction="sum")
    got = linear_cross_entropy(hidden, weight, labels, bias, label_smoothing=smoothing,
                               chunk_size=chunk, backend="torch")
    torch.testing.assert_close(got, ref)
    for g_got, g_ref in zip(_grads(2.5 * got, hidden, weight, bias), _grads(2.5 * ref, hidden, weight, bias)):
        torch.testing.assert_close(g_got, g_ref)


def test_frozen_weight_gets_no_grad_and_batched_shape():
    hidden, weight, _, labels = _inputs("cpu", n=24, bias=False)
    weight = weight.detach()
    h3, y3 = hidden.view(2, 12, -1), labels.view(2, 12)
    got = linear_cross_entropy(h3, weight, y3, chunk_size=5, backend="torch")
    ref = F.cross_entropy(F.linear(hidden, weight), labels, reduction="sum")
    torch.testing.assert_close(got, ref)
    (g,) = torch.autograd.grad(got, hidden)
    (g_ref,) = torch.autograd.grad(ref, hidden)
    torch.testing.assert_close(g, g_ref)


def test_bf16_close_to_fp64_reference():
    hidden, weight, _, labels = _inputs("cpu", n=64, h=32, v=300, bias=False)
    ref = F.cross_entropy(F.linear(hidden, weight), labels, reduction="sum")
    got = linear_cross_entropy(hidden.detach().bfloat16(), weight.detach().bfloat16(), labels, chunk_size=16)
    assert got.dtype == torch.float32
    assert abs(got.item() - ref.item()) / ref.item() < 2e-2


def test_all_ignored_gives_zero_loss_and_grad():
    hidden, weight, _, labels = _inputs("cpu", bias=False)
    labels = torch.full_like(labels, -100)
    got = linear_cross_entropy(hidden, weight, labels, chunk_size=8)
    assert got.item() == 0.0
    (g,) = torch.autograd.grad(got, hidden)
    assert torch.count_nonzero(g) == 0


def test_errors_name_the_problem():
    hidden, weight, _, labels = _inputs("cpu", bias=False)
    with pytest.raises(ValueError, match="unknown linear-CE backend 'triton'"):
        linear_cross_entropy(hidden, weight, labels, backend="triton")
    with pytest.raises(ValueError, match="label_smoothing must be in"):
        linear_cross_entropy(hidden, weight, labels, label_smoothing=1.0)
    with pytest.raises(ValueError, match="disagree on the token dims"):
        linear_cross_entropy(hidden, weight, labels[:-1])


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_both_chunk_maths_give_cross_entropys_loss_and_logit_gradient(smoothing):
    """The general chunk math (every row, ignored ones masked: CUDA) and the host one (target rows
    only, buffers reused) against autograd through F.cross_entropy on the same logits."""
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(23, 40, generator=g, dtype=torch.float64).requires_grad_()
    labels = torch.randint(0, 40, (23,), generator=g)
    labels[::4] = -100
    ref = F.cross_entropy(logits, labels, ignore_index=-100, label_smoothing=smoothing, reduction="sum")
    (g_ref,) = torch.autograd.grad(ref, logits)
    loss, grad = _ce_chunk(logits.detach(), labels, -100, smoothing)
    torch.testing.assert_close(loss, ref.detach())
    torch.testing.assert_close(grad, g_ref)
    keep = labels != -100
    loss, grad = _ce_target_rows(logits.detach()[keep].clone(), labels[keep], smoothing, torch.float64)
    torch.testing.assert_close(loss, ref.detach())
    torch.testing.assert_close(grad, g_ref[keep])


def test_cpu_projects_only_target_rows():
    """Prompt and padding rows carry no loss, so a CPU run never makes their logits: a non-finite
    hidden state there changes nothing, and its gradient is zero."""
    hidden, weight, _, labels = _inputs("cpu", bias=False)
    ignored = labels == -100
    poisoned = hidden.detach().clone()
    poisoned[ignored] = float("nan")
    poisoned.requires_grad_()
    got = linear_cross_entropy(poisoned, weight, labels, chunk_size=8)
    ref = F.cross_entropy(F.linear(hidden, weight), labels, ignore_index=-100, reduction="sum")
    torch.testing.assert_close(got, ref)
    (g,) = torch.autograd.grad(got, poisoned)
    assert torch.count_nonzero(g[ignored]) == 0
    (g_ref,) = torch.autograd.grad(ref, hidden)
    torch.testing.assert_close(g[~ignored], g_ref[~ignored])


def test_shift_labels_and_chunk_size():
    y = torch.tensor([[5, 6, 7], [1, -100, 2]])
    assert shift_labels(y).tolist() == [[6, 7, -100], [-100, 2, -100]]
    assert default_chunk_size(151936) == 1024  # 2**28 values / 152k vocab -> 1766 -> 1024
    assert default_chunk_size(1000) == 262144
    assert default_chunk_size(10**9) == 64
    assert default_chunk_size(49152, CPU_CHUNK_ELEMS) == 512  # what a CPU run of SmolLM2 uses


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_liger_backend_matches_torch_backend(smoothing):
    pytest.importorskip("liger_kernel")
    hidden, weight, _, labels = _inputs("cuda", n=300, h=64, v=1000, bias=False)
    hidden32, weight32 = hidden.detach().float().requires_grad_(), weight.detach().float().requires_grad_()
    ref = linear_cross_entropy(hidden32, weight32, labels, label_smoothing=smoothing, backend="torch")
    got = linear_cross_entropy(hidden32, weight32, labels, label_smoothing=smoothing, backend="liger")
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-3)
    for g1, g2 in zip(torch.autograd.grad(got, (hidden32, weight32)), torch.autograd.grad(ref, (hidden32, weight32))):
        torch.testing.assert_close(g1, g2, rtol=1e-3, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_compiled_bf16_path_close_to_fp64_reference(smoothing):
    hidden, weight, _, labels = _inputs("cuda", n=300, h=64, v=1000, bias=False)
    ref = F.cross_entropy(F.linear(hidden, weight), labels, label_smoothing=smoothing, reduction="sum")
    g_ref = torch.autograd.grad(ref, (hidden, weight))
    hb, wb = hidden.detach().bfloat16().requires_grad_(), weight.detach().bfloat16().requires_grad_()
    got = linear_cross_entropy(hb, wb, labels, label_smoothing=smoothing, chunk_size=128, backend="torch")
    assert abs(got.item() - ref.item()) / ref.item() < 1e-2
    for g, gr in zip(torch.autograd.grad(got, (hb, wb)), g_ref):
        assert ((g.double() - gr).norm() / gr.norm()).item() < 2e-2


def test_cpu_bf16_autocast_close_to_fp64_reference():
    """fp32 hidden states and head under bf16 autocast (an fp32 model trained with train.precision=bf16):
    the chunk products run in bf16, the gradient comes back in the hidden states' own dtype."""
    hidden, weight, _, labels = _inputs("cpu", n=64, h=32, v=300, bias=False)
    ref = F.cross_entropy(F.linear(hidden, weight), labels, ignore_index=-100, reduction="sum")
    (g_ref,) = torch.autograd.grad(ref, hidden)
    h32 = hidden.detach().float().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = linear_cross_entropy(h32, weight.detach().float(), labels, chunk_size=16)
    (g,) = torch.autograd.grad(got, h32)
    assert g.dtype == torch.float32
    assert abs(got.item() - ref.item()) / ref.item() < 2e-2
    assert ((g.double() - g_ref).norm() / g_ref.norm()).item() < 3e-2
