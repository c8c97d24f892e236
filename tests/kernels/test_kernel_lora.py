"""Fused LoRA linear vs PEFT's own lora.Linear: outputs and gradients, and the module swap."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model

from tunelab.kernels.lora import (
    FusedLoraLinear,
    fuse_lora,
    lora_linear,
    linear_plus_lowrank,
    lora_linear_ops,
    unfuse_lora,
)


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.up = torch.nn.Linear(12, 20, bias=True)
        self.down = torch.nn.Linear(20, 12, bias=False)

    def forward(self, x):
        return self.down(torch.relu(self.up(x)))


def _peft_model(dropout=0.0, seed=0):
    torch.manual_seed(seed)
    model = get_peft_model(Tiny().double(), LoraConfig(r=4, lora_alpha=8, target_modules=["up", "down"],
                                                      lora_dropout=dropout))
    for name, p in model.named_parameters():  # lora_B starts at zero: make the update non-trivial
        if "lora_B" in name:
            torch.nn.init.normal_(p)
    return model


def operands(seed: int, base_grads: bool) -> tuple[torch.Tensor, ...]:
    """x (3, 5, 12), base weight (20, 12) and bias, LoRA A (4, 12) and B (20, 4), float64."""
    g = torch.Generator().manual_seed(seed)
    shapes = [((3, 5, 12), True), ((20, 12), base_grads), ((20,), base_grads), ((4, 12), True), ((20, 4), True)]
    return tuple(torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=rg) for shape, rg in shapes)


def check_against_reference(fn, x, w, b, a, bb) -> None:
    """fn's output and the gradients of every input that requires grad equal the written-out formula's."""
    ref = x @ w.T + b + 0.5 * (x @ a.T) @ bb.T
    got = fn(x, w, b, a, bb, 0.5)
    torch.testing.assert_close(got, ref)
    inputs = [t for t in (x, w, b, a, bb) if t.requires_grad]
    gy = torch.randn_like(ref)
    for g1, g2 in zip(torch.autograd.grad(got, inputs, gy), torch.autograd.grad(ref, inputs, gy)):
        torch.testing.assert_close(g1, g2)


@pytest.mark.parametrize("fn", [lora_linear, lora_linear_ops])
def test_lora_linear_matches_reference_with_base_grads(fn):
    x, w, b, a, bb = operands(1, base_grads=True)
    check_against_reference(fn, x, w, b, a, bb)
    torch.autograd.gradcheck(lambda *t: fn(*t, 0.5), (x[:1, :2].detach().requires_grad_(), w, b, a, bb))


def test_frozen_base_goes_through_one_operator_with_the_same_values_and_grads():
    x, w, b, a, bb = operands(2, base_grads=False)
    check_against_reference(lora_linear_ops, x, w, b, a, bb)
    # the operator's fake (shape) function, autograd formula and schema, as torch checks custom operators
    xa = (x.detach().reshape(-1, 12) @ a.detach().T).requires_grad_()
    torch.library.opcheck(linear_plus_lowrank, (x.detach().reshape(-1, 12).requires_grad_(), w, None, xa,
                                                bb.detach().requires_grad_(), 0.5))
    torch.autograd.gradcheck(lambda xx, aa, bbb: lora_linear_ops(xx, w, b, aa, bbb, 0.5), (x[:1, :2], a, bb))
    graphs = []
    torch.compile(lambda *t: lora_linear_ops(*t, 0.5), backend=lambda gm, _: graphs.append(gm) or gm)(x, w, b, a, bb)
    assert "linear_plus_lowrank" in graphs[0].code   # the compiler sees the operator, not linear + addmm


@pytest.mark.parametrize("compiled", [False, True])
def test_frozen_base_operator_under_autocast_equals_plain_ops(compiled):
    """An fp32 model trained in bf16 autocast (train.precision on an fp32 model): the operator sees what autocast
    would give a linear, so output and gradients equal the plain ops' exactly."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 12, requires_grad=True)
    w, b = torch.randn(20, 12), torch.randn(20)
    a, bb = torch.randn(4, 12, requires_grad=True), torch.randn(20, 4, requires_grad=True)

    def plain(x, w, b, a, bb, s):
        x2 = x.reshape(-1, 12)
        return torch.addmm(torch.nn.functional.linear(x2, w, b), x2 @ a.t(), bb.t(), alpha=s).view(2, 3, 20)

    results = []
    for fn in (lora_linear_ops, plain):
        fn = torch.compile(fn, backend="aot_eager") if compiled else fn
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = fn(x, w, b, a, bb, 0.5)
        results.append((y, *torch.autograd.grad(y.float().sum(), (x, a, bb))))
    for got, want in zip(*results):
        assert got.dtype == want.dtype
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_fused_model_matches_peft_outputs_and_grads():
    ref_model, fused_model = _peft_model(), _peft_model()
    assert fuse_lora(fused_model) == 2
    assert sum(isinstance(m, FusedLoraLinear) for m in fused_model.modules()) == 2
    x = torch.randn(4, 7, 12, dtype=torch.float64)
    out_ref, out = ref_model(x), fused_model(x)
    torch.testing.assert_close(out, out_ref)
    out_ref.square().sum().backward()
    out.square().sum().backward()
    ref_grads = {n: p.grad for n, p in ref_model.named_parameters() if p.requires_grad}
    got_grads = {n.replace(".inner", ""): p.grad for n, p in fused_model.named_parameters() if p.requires_grad}
    assert ref_grads.keys() == got_grads.keys() and len(ref_grads) == 4
    for name, grad in ref_grads.items():
        torch.testing.assert_close(got_grads[name], grad, msg=name)


def test_fused_wrappers_keep_peft_keys_and_unfuse_restores_modules():
    model = _peft_model()
    keys = list(model.state_dict())
    paths = [n for n, _ in model.named_modules()]
    fuse_lora(model)
    assert list(model.state_dict()) == keys  # state-dict hooks strip the wrapper's `.inner.`
    assert [n for n, _ in model.named_modules()] != paths
    assert unfuse_lora(model) == 2
    assert list(model.state_dict()) == keys and [n for n, _ in model.named_modules()] == paths


@pytest.mark.parametrize("case", ["disabled", "merged"])  # dropout now runs fused: tests/kernels/test_speed_defaults.py
def test_falls_back_to_peft_when_fused_path_does_not_apply(case):
    ref_model = _peft_model(dropout=0.3 if case == "dropout" else 0.0)
    fused_model = _peft_model(dropout=0.3 if case == "dropout" else 0.0)
    fuse_lora(fused_model)
    x = torch.randn(2, 12, dtype=torch.float64)
    if case == "dropout":
        ref_model.eval(), fused_model.eval()   # dropout inactive -> both deterministic, same function
    if case == "disabled":
        with ref_model.disable_adapter(), fused_model.disable_adapter():
            torch.testing.assert_close(fused_model(x), ref_model(x))
        return
    if case == "merged":
        ref_model.merge_adapter(), fused_model.merge_adapter()
    wrapper = next(m for m in fused_model.modules() if isinstance(m, FusedLoraLinear))
    assert wrapper._fused_args() is None
    torch.testing.assert_close(fused_model(x), ref_model(x))


def test_bf16_input_with_fp32_adapter():
    model = _peft_model()
    ref = model(torch.ones(2, 12, dtype=torch.float64))
    model = model.to(torch.bfloat16)
    for n, p in model.named_parameters():
        if "lora_" in n:
            p.data = p.data.float()
    fuse_lora(model)
    out = model(torch.ones(2, 12, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16
    assert ((out.double() - ref).norm() / ref.norm()).item() < 2e-2
    out.float().sum().backward()
    assert all(p.grad.dtype == torch.float32 for n, p in model.named_parameters() if "lora_" in n)


def test_compiled_fused_model_matches_peft():
    ref_model, fused_model = _peft_model(), _peft_model()
    fuse_lora(fused_model)
    compiled = torch.compile(fused_model, backend="aot_eager")   # traces the lora_linear_ops path
    x = torch.randn(3, 12, dtype=torch.float64)
    out_ref, out = ref_model(x), compiled(x)
    torch.testing.assert_close(out, out_ref)
    out_ref.sum().backward()
    out.sum().backward()
    for (n1, p1), (n2, p2) in zip(ref_model.named_parameters(), fused_model.named_parameters()):
        if p1.requires_grad:
            torch.testing.assert_close(p2.grad, p1.grad, msg=n1)


class ScaledLinear(torch.nn.Linear):
    """An nn.Linear subclass with a forward of its own, as quantized bases (bitsandbytes' Linear4bit) are."""

    def forward(self, x):
        return 2.0 * super().forward(x)


def test_bases_with_their_own_forward_keep_peft_modules():
    torch.manual_seed(0)
    tiny = Tiny().double()
    scaled = ScaledLinear(tiny.up.in_features, tiny.up.out_features).double()
    scaled.load_state_dict(tiny.up.state_dict())
    tiny.up = scaled
    model = get_peft_model(tiny, LoraConfig(r=4, lora_alpha=8, target_modules=["up", "down"]))
    x = torch.randn(2, 12, dtype=torch.float64)
    ref = model(x)
    assert fuse_lora(model) == 1   # only `down`: the fused node computes F.linear, not the subclass's forward
    torch.testing.assert_close(model(x), ref)


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_fused_node_under_bf16_autocast_follows_peft(device):
    """An fp32 model under bf16 autocast (train.precision=bf16 with model.dtype=float32; on CUDA also a run
    with compiled layers off): the fused node computes in bf16 as autocast's linears do, and gradients reach
    the fp32 adapter in fp32."""
    torch.manual_seed(0)
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        model = get_peft_model(Tiny(), LoraConfig(r=4, lora_alpha=8, target_modules=["up", "down"])).to(device)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.5)
        models.append(model)
    ref_model, fused_model = models
    assert fuse_lora(fused_model) == 2
    x = torch.randn(6, 12, device=device)
    grads = []
    for model in (ref_model, fused_model):
        with torch.autocast(device, dtype=torch.bfloat16):
            out = model(x)
        assert out.dtype == torch.bfloat16
        out.float().square().sum().backward()
        grads.append({n.replace(".inner", ""): p.grad for n, p in model.named_parameters() if p.requires_grad})
        grads[-1]["out"] = out.float()
    assert grads[0].keys() == grads[1].keys()
    for name, want in grads[0].items():
        got = grads[1][name]
        assert got.dtype == torch.float32, name
        assert ((got - want).norm() / want.norm()).item() < 2e-2, name
