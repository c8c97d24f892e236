"""Optimizer side: parameter groups (LLRD, head/body, LoRA+), GaLore against a direct computation, BAdam
blocks, EWC penalty, and the optimizer registry."""

import math

import pytest
import torch

from tunelab.config.methods import FullCfg, LoraCfg
from tunelab.config.optim import BadamCfg, EwcCfg, GaloreCfg, OptimCfg
from tunelab.engine.optim import OPTIMIZERS, build_optimizer, build_scheduler
from tunelab.methods import get_method
from tunelab.models import load_model

CPU = torch.device("cpu")


def group_of(opt, param) -> dict:
    return next(g for g in opt.param_groups if any(p is param for p in g["params"]))


def test_layer_decay_and_head_rates():
    model = get_method("full").apply(load_model("tiny-qwen2"), FullCfg())
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())  # untie: separate head
    opt = build_optimizer(model, 1e-3, 0.0, CPU, OptimCfg(layer_decay=0.5, head_lr_scale=2.0))
    lr = lambda p: group_of(opt, p)["lr"]
    # 2 layers: layer 1 at 0.5^1, layer 0 at 0.5^2, embeddings at 0.5^3, head at 2x, final norm at 1x
    assert lr(model.model.layers[1].self_attn.q_proj.weight) == pytest.approx(1e-3 * 0.5)
    assert lr(model.model.layers[0].mlp.up_proj.weight) == pytest.approx(1e-3 * 0.25)
    assert lr(model.model.layers[0].self_attn.q_proj.bias) == pytest.approx(1e-3 * 0.25)
    assert lr(model.model.embed_tokens.weight) == pytest.approx(1e-3 * 0.125)
    assert lr(model.lm_head.weight) == pytest.approx(2e-3)
    assert lr(model.model.norm.weight) == pytest.approx(1e-3)
    # the schedule multiplies every group's own rate
    sched = build_scheduler(opt, "linear", 10, 0.0)
    opt.step()
    sched.step()
    assert lr(model.lm_head.weight) == pytest.approx(2e-3 * 0.9)
    assert lr(model.model.embed_tokens.weight) == pytest.approx(1e-3 * 0.125 * 0.9)


def test_lora_plus_b_group_gets_ratio():
    model = get_method("lora").apply(load_model("tiny-llama"), LoraCfg(r=4, lora_plus_ratio=16))
    opt = build_optimizer(model, 2e-4, 0.0, CPU)
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert group_of(opt, p)["lr"] == pytest.approx(2e-4 * (16 if "lora_B" in n else 1)), n
    assert opt.param_groups[0]["lr"] == pytest.approx(2e-4)  # the logged lr is the base rate


def test_galore_matches_direct_computation():
    from tunelab.engine.optim.galore import GaLoreAdamW

    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(6, 10))  # m < n: left projection
    start = w.detach().clone()
    opt = GaLoreAdamW([{"params": [w], "rank": 2, "update_proj_gap": 10, "scale": 0.5}], lr=0.1, eps=1e-8)
    grads = [torch.randn(6, 10), torch.randn(6, 10)]
    for g in grads:
        w.grad = g.clone()
        opt.step()
    # direct: P from the first gradient's SVD, Adam on P^T G, update P N * scale
    p = torch.linalg.svd(grads[0], full_matrices=False)[0][:, :2]
    m = v = 0
    expected = start.clone()
    for t, g in enumerate(grads, start=1):
        r = p.T @ g
        m = 0.9 * m + 0.1 * r
        v = 0.999 * v + 0.001 * r * r
        n = (m / (1 - 0.9 ** t)) / ((v / (1 - 0.999 ** t)).sqrt() + 1e-8)
        expected -= 0.1 * 0.5 * (p @ n)
    torch.testing.assert_close(w.detach(), expected)
    assert opt.state[w]["exp_avg"].shape == (2, 10)  # moments live in the projection


def test_galore_targets_only_named_matrices():
    model = get_method("full").apply(load_model("tiny-llama"), FullCfg())
    opt = build_optimizer(model, 1e-3, 0.0, CPU, OptimCfg(name="galore_adamw", galore=GaloreCfg(rank=4, target_modules=["mlp"])))
    projected = {id(p) for g in opt.param_groups if "rank" in g for p in g["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in projected}
    assert names and all(".mlp." in n and n.endswith("weight") for n in names)


def test_badam_updates_one_block_and_switches():
    model = get_method("full").apply(load_model("tiny-llama"), FullCfg())
    opt = build_optimizer(model, 1e-2, 0.0, CPU, OptimCfg(name="badam", badam=BadamCfg(switch_mode="descending",
                                                                                      switch_interval=2)))
    ids = torch.randint(0, 49152, (2, 8), generator=torch.Generator().manual_seed(0))
    touched = []
    for _ in range(3):
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
        touched.append({n.split(".")[2] if n.startswith("model.layers.") else "rest"
                        for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])})
    # blocks: layer 0, layer 1, rest; descending = rest, rest, layer 1
    assert touched == [{"rest"}, {"rest"}, {"1"}]
    # the finished block's moments were dropped; only the active block has state
    assert all(any(p is q for q in opt.param_groups[1]["params"]) for p in opt.state)
    restored = build_optimizer(model, 1e-2, 0.0, CPU, OptimCfg(name="badam", badam=BadamCfg(switch_interval=2)))
    restored.load_state_dict(opt.state_dict())
    assert restored.param_groups[0]["badam_step"] == 3


@pytest.mark.parametrize("name", ["adamw", "adafactor", "adamw_8bit"])
def test_optimizer_registry_builds_and_steps(name):
    model = get_method("lora").apply(load_model("tiny-llama"), LoraCfg(r=2))
    opt = build_optimizer(model, 1e-3, 0.01, CPU, OptimCfg(name=name))
    ids = torch.randint(0, 49152, (2, 8), generator=torch.Generator().manual_seed(0))
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    assert any(not torch.equal(p.detach(), before[n]) for n, p in model.named_parameters() if n in before)
    assert set(OPTIMIZERS) == {"adamw", "adamw_8bit", "paged_adamw_8bit", "adafactor", "galore_adamw", "badam"}


def test_auto_optimizer_is_paged_8bit_only_for_a_4bit_base_on_cuda():
    from tunelab.config.methods import QLoraCfg
    from tunelab.engine.optim import resolve_name

    qlora = get_method("qlora").apply(load_model("tiny-llama"), QLoraCfg(r=2))
    lora = get_method("lora").apply(load_model("tiny-llama"), LoraCfg(r=2))
    assert resolve_name("auto", qlora, torch.device("cuda")) == "paged_adamw_8bit"
    assert resolve_name("auto", qlora, CPU) == "adamw"
    assert resolve_name("auto", lora, torch.device("cuda")) == "adamw"
    assert resolve_name("adafactor", qlora, torch.device("cuda")) == "adafactor"
    assert isinstance(build_optimizer(qlora, 1e-3, 0.0, CPU), torch.optim.AdamW)


def test_ewc_penalty_zero_at_reference_and_quadratic_away(tmp_path):
    from tunelab.engine.regularise import build_ewc, diagonal_fisher

    model = get_method("lora").apply(load_model("tiny-llama"), LoraCfg(r=2, init="gaussian", dropout=0.0))
    g = torch.Generator().manual_seed(0)
    samples = [torch.randint(0, 49152, (8,), generator=g) for _ in range(3)]
    collate = lambda s: {"input_ids": torch.stack(s)}

    def loss_fn(m, batch):
        ids = batch["input_ids"]
        out = m(input_ids=ids, labels=ids)
        return out.loss * (ids.shape[1] - 1), ids.shape[1] - 1

    ewc = build_ewc(EwcCfg(lambda_=3.0, samples=3), model, tmp_path, samples, collate, loss_fn, CPU)
    assert float(ewc.penalty()) == 0.0
    # the Fisher is the mean of squared per-sample gradients: check one entry by hand
    name, param = next((n, p) for n, p in model.named_parameters() if "lora_A" in n)
    grads = []
    for s in samples:
        model.zero_grad()
        (loss_fn(model, collate([s]))[0] / 7).backward()
        grads.append(param.grad.detach().clone())
    torch.testing.assert_close(ewc.fisher[name], sum(gr ** 2 for gr in grads) / 3)
    with torch.no_grad():
        param.add_(0.1)
    p1 = float(ewc.penalty())
    with torch.no_grad():
        param.add_(0.1)
    p2 = float(ewc.penalty())
    assert p1 == pytest.approx(0.5 * 3.0 * float(ewc.fisher[name].sum()) * 0.01, rel=1e-4)
    assert p2 == pytest.approx(4 * p1, rel=1e-4)  # quadratic in the distance
    # resuming reads the stored reference instead of re-estimating at the moved weights
    again = build_ewc(EwcCfg(lambda_=3.0, samples=3), model, tmp_path, samples, collate, loss_fn, CPU)
    assert float(again.penalty()) == pytest.approx(p2, rel=1e-5)
    assert math.isfinite(float(diagonal_fisher(model, samples[:1], collate, loss_fn, CPU)[name].sum()))
