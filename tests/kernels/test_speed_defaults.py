"""train.speed's defaults and switches: each fast path's plan line and fallback note, fused LoRA with dropout
against PEFT, wrappers that keep state-dict keys (checkpoints, resume), the no-sync loop, packed rows.

Tolerances: fp32 on CPU. Fused LoRA with dropout is compared with PEFT's modules drawing the same seeded mask
(`dropout_mask`, in the same order), so outputs and gradients agree to summation order (rtol 1e-5); the mask
itself is compared with nn.Dropout's in distribution (keep rate, scale, independence).
"""

import json

import pytest
import torch

import tunelab
from tunelab.config import LoraCfg, TrainCfg
from tunelab.kernels.lora import dropout_mask, fuse_lora, lora_linear_ops, unfuse_lora
from tunelab.kernels.regions import CheckpointedLayer, checkpoint_layers, uncheckpoint_layers
from tunelab.kernels.train import plan_speed, speed_context
from tunelab.methods import get_method
from tunelab.models import load_model


def lora_model(dropout: float) -> torch.nn.Module:
    torch.manual_seed(0)
    model = get_method("lora").apply(load_model("tiny-llama"), LoraCfg(r=4, alpha=8, dropout=dropout))
    for name, p in model.named_parameters():  # B starts at zero; make the adapter matter
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    return model


def forward_backward(model, seed: int) -> tuple[torch.Tensor, dict]:
    model.train()
    model.zero_grad(set_to_none=True)
    ids = torch.randint(0, 49152, (2, 12), generator=torch.Generator().manual_seed(3))
    torch.manual_seed(seed)  # the dropout masks come from the global generator, as in training
    logits = model(input_ids=ids, use_cache=False).logits
    logits.float().pow(2).mean().backward()
    grads = {n.replace(".inner.", "."): p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logits.detach(), grads


class MaskDropout(torch.nn.Module):
    """PEFT's `lora_dropout` drawing its mask as the fused node does (`dropout_mask`)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        return x * dropout_mask(x, self.p) if self.training else x


def peft_with_mask_dropout(model, p: float) -> list:
    """Swap every LoRA layer's nn.Dropout for `MaskDropout`; returns the (dict, key, module) to put back."""
    swapped = []
    for m in model.modules():
        for key, drop in getattr(m, "lora_dropout", {}).items():
            if isinstance(drop, torch.nn.Dropout):
                swapped.append((m.lora_dropout, key, drop))
                m.lora_dropout[key] = MaskDropout(p)
    return swapped


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_fused_lora_with_dropout_equals_peft_with_the_same_seed(dropout):
    model = lora_model(dropout)
    swapped = peft_with_mask_dropout(model, dropout)   # PEFT's own forward, the fused node's mask draws
    assert len(swapped) == (14 if dropout else 0)
    ref_out, ref_grads = forward_backward(model, seed=7)
    for holder, key, drop in swapped:
        holder[key] = drop
    assert fuse_lora(model) == 14
    out, grads = forward_backward(model, seed=7)
    unfuse_lora(model)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-6)
    assert grads.keys() == ref_grads.keys() and any("lora_A" in k for k in grads)
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-5, atol=1e-6, msg=name)
    if dropout:  # another seed draws another mask: the dropout really acts inside the fused node
        other, _ = forward_backward(model, seed=8)
        assert not torch.allclose(other, ref_out)


def test_fused_lora_dropout_off_in_eval_mode():
    model = lora_model(0.5)
    fuse_lora(model)
    model.eval()
    ids = torch.randint(0, 49152, (1, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = model(input_ids=ids).logits
        b = model(input_ids=ids).logits
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("p", [0.05, 0.3])
def test_cpu_dropout_mask_is_nn_dropouts_in_distribution(p):
    """The CPU mask (two 15-bit uniforms per generator draw) against nn.Dropout's: same drop rate within
    binomial noise, same kept value up to p's rounding to 1/32768, mean 1, neighbours independent, and a
    seed repeats it."""
    n = 1 << 20
    torch.manual_seed(0)
    mask = dropout_mask(torch.ones(1024, n // 1024), p).flatten()
    torch.manual_seed(0)
    ref = torch.nn.functional.dropout(torch.ones(n), p, training=True)
    sigma = (p * (1 - p) / n) ** 0.5
    for m in (mask, ref):
        assert abs(float((m == 0).double().mean()) - p) < 5 * sigma
    kept, ref_kept = mask[mask > 0].unique(), ref[ref > 0].unique()
    assert kept.numel() == 1 and float(kept) == pytest.approx(float(ref_kept), rel=1e-4)
    assert abs(float(mask.double().mean()) - 1.0) < 5 * sigma / (1 - p)
    dropped = (mask == 0).double()
    both = float((dropped[0::2] * dropped[1::2]).mean())   # the two halves of one 31-bit draw
    assert abs(both - p * p) < 5 * (p * p / (n // 2)) ** 0.5
    torch.manual_seed(0)
    assert torch.equal(dropout_mask(torch.ones(1024, n // 1024), p).flatten(), mask)
    assert dropout_mask(torch.ones(4, 4, dtype=torch.bfloat16), p).dtype == torch.bfloat16


def test_dropout_distribution_of_the_eager_and_compiled_formulations():
    """Eager (`dropout_mask`) and compiled (`F.dropout` in `lora_linear_ops`) paths: same keep rate and scale."""
    p = 0.25
    torch.manual_seed(0)
    mask = dropout_mask(torch.ones(4000, 64), p)
    assert mask.unique().tolist() == pytest.approx([0.0, 1 / (1 - p)])
    assert abs(float((mask > 0).float().mean()) - (1 - p)) < 0.01
    x = torch.ones(4000, 64)
    w = torch.zeros(3, 64)
    a = torch.eye(64)[:1]  # picks feature 0 of dropout(x)
    b = torch.ones(3, 1)
    y = lora_linear_ops(x, w, None, a, b, 1.0, p)[:, 0]  # = dropout(x)[:, 0]
    assert abs(float((y > 0).float().mean()) - (1 - p)) < 0.03 and float(y.max()) == pytest.approx(1 / (1 - p))


def test_wrappers_keep_state_dict_keys_and_load_through_them():
    model = lora_model(0.1)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    fuse_lora(model)
    checkpoint_layers(model, every=1)
    assert any(isinstance(m, CheckpointedLayer) for m in model.modules())
    assert list(model.state_dict()) == list(state) or set(model.state_dict()) == set(state)
    changed = {k: v + 1 if "lora_A" in k else v for k, v in state.items()}
    result = model.load_state_dict(changed, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    uncheckpoint_layers(model)
    unfuse_lora(model)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, changed[k], msg=k)


AUTO_GRAPHS = "auto: off, cold-start cost; set true to capture"


def test_plan_line_names_each_path_and_why_it_is_off():
    model = lora_model(0.05)
    cpu = plan_speed(model, TrainCfg(), torch.device("cpu"), packed=False, optimizer="adamw")
    assert cpu.on == ["chunked_ce", "fused_lora"]
    assert cpu.off["compile_layers"] == cpu.off["prefetch"] == "auto: cpu (on for CUDA)"
    assert cpu.off["flex_attention"] == "auto: cpu (on for CUDA)" and cpu.off["fused_adamw"] == "cpu"
    cuda = plan_speed(model, TrainCfg(), torch.device("cuda"), packed=True, optimizer="adamw")
    assert cuda.on == ["chunked_ce", "fused_lora", "compile_layers", "flex_attention", "prefetch", "fused_adamw"]
    assert cuda.line().startswith("speed: chunked_ce, fused_lora, compile_layers")
    assert cuda.off == {"cuda_graphs": AUTO_GRAPHS}  # CUDA graphs only when asked for (tests/kernels/test_cuda_graphs_*)
    unpacked = plan_speed(model, TrainCfg(speed={"fused_lora": False}), torch.device("cuda"), packed=False)
    assert unpacked.off == {"fused_lora": "train.speed.fused_lora=false",
                            "flex_attention": "rows are not packed (data.packing)", "cuda_graphs": AUTO_GRAPHS}
    plain = plan_speed(model, TrainCfg(speed={"mode": "plain"}), torch.device("cuda"), optimizer="adamw")
    assert plain.on == ["fused_adamw"] and set(plain.off.values()) == {"train.speed.mode=plain"}
    lean = plan_speed(model, TrainCfg(speed={"mode": "lean"}), torch.device("cuda"))
    assert "lean (checkpoint every layer)" in lean.on
    full = plan_speed(load_model("tiny-llama"), TrainCfg(), torch.device("cuda"), optimizer="adamw_8bit")
    assert full.off == {"fused_lora": "no plain LoRA linears (4-bit bases keep PEFT's modules)", "flex_attention":
                        "rows are not packed (data.packing)", "cuda_graphs": AUTO_GRAPHS,
                        "fused_adamw": "optimizer adamw_8bit"}


def test_lean_mode_wraps_every_layer_for_training_and_unwraps_after():
    model = lora_model(0.0)
    keys = set(model.state_dict())
    with speed_context(model, TrainCfg(speed={"mode": "lean"}), torch.device("cpu"), say=False):
        wrapped = [m for m in model.modules() if isinstance(m, CheckpointedLayer)]
        assert len(wrapped) == 2 and all(m.active for m in wrapped)
        assert set(model.state_dict()) == keys
    assert not any(isinstance(m, CheckpointedLayer) for m in model.modules())


def run_cfg(data_file, out, **train):
    return {"model": {"name": "tiny-llama"},
            "data": {"train": str(data_file), "max_length": 64, "val_size": 0.25},
            "method": {"name": "lora", "r": 4, "alpha": 8, "dropout": 0.1},
            "train": {"batch_size": 4, "lr": 1e-2, "seed": 0, "report": False, "eval_every": 2, **train},
            "output_dir": str(out)}


def losses(run) -> list[float]:
    return [m["loss"] for m in run.metrics() if "loss" in m]


def test_fused_lora_with_dropout_checkpoints_and_resumes_like_an_uninterrupted_run(tmp_path, addition_file):
    """save_every, resume and early stopping with fused LoRA (dropout 0.1): same curve as without interruption."""
    import os
    import signal

    import tunelab.stages.sft as sft
    from tunelab.engine.loop import TrainingInterrupted

    fast = {"speed": {"fused_lora": True, "prefetch": True}, "eval_every": None}
    whole = tunelab.train(run_cfg(addition_file, tmp_path / "whole", max_steps=4, **fast), progress=False)
    real_loss, calls = sft.sft_loss, {"n": 0}

    def interrupting(model, batch, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:  # during step 2: the loop saves a checkpoint after it and stops
            os.kill(os.getpid(), signal.SIGINT)
        return real_loss(model, batch, *a, **k)

    sft.sft_loss = interrupting
    try:
        with pytest.raises(TrainingInterrupted):
            tunelab.train(run_cfg(addition_file, tmp_path / "part", max_steps=4, save_every=2, **fast), progress=False)
    finally:
        sft.sft_loss = real_loss
    ckpt = tmp_path / "part" / "checkpoints"
    assert [p.name for p in ckpt.iterdir()] == ["step-000002"]
    saved = json.loads((ckpt / "step-000002" / "weights" / "adapter_config.json").read_text())
    assert saved["lora_dropout"] == 0.1
    from safetensors.torch import load_file

    keys = load_file(str(ckpt / "step-000002" / "weights" / "adapter_model.safetensors"))
    assert keys and not any(".inner." in k or ".layer." in k for k in keys)
    resumed = tunelab.train(run_cfg(addition_file, tmp_path / "part", max_steps=4, save_every=2, resume="auto",
                                    **fast), progress=False)
    assert losses(resumed) == pytest.approx(losses(whole), rel=1e-5)


def test_prefetch_mode_logs_the_same_curve_and_summary_counts_real_tokens(tmp_path, addition_file):
    ahead = tunelab.train(run_cfg(addition_file, tmp_path / "a", max_steps=4, log_every=2,
                                  speed={"prefetch": True}), progress=False)
    step = tunelab.train(run_cfg(addition_file, tmp_path / "b", max_steps=4, log_every=2,
                                 speed={"prefetch": False}), progress=False)
    assert [m["step"] for m in ahead.metrics() if "loss" in m] == [2, 4]
    assert losses(ahead) == pytest.approx(losses(step), rel=1e-6)
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["loss_tokens"] > 0 and summary["tokens"] > summary["loss_tokens"]
    assert summary["first_step_s"] > 0 and summary["steady_tokens_per_s"] > 0
    assert summary["train_s"] + summary["eval_s"] <= summary["elapsed_s"] + 1e-3
    # train_s is stored to the millisecond: on a run this short that rounding alone can be ~0.5%
    assert summary["tokens_per_s"] == pytest.approx(summary["tokens"] / summary["train_s"],
                                                    rel=max(1e-3, 1e-3 / summary["train_s"]))


def test_device_side_nan_guard_skips_the_update_and_names_the_step(tmp_path, addition_file, monkeypatch):
    """Ahead mode with fused AdamW (found_inf): a NaN loss at step 2 leaves the weights of step 1."""
    import tunelab.engine.loop as loop
    from tunelab.engine.loop import TrainingDiverged

    real_build = loop.build_optimizer
    monkeypatch.setattr(loop, "build_optimizer", lambda model, lr, wd, device, optim=None: torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=lr, fused=True))
    import tunelab.stages.sft as sft

    real_loss = sft.sft_loss
    calls = {"n": 0}

    def poisoned(model, batch, *a, **k):
        loss, n = real_loss(model, batch, *a, **k)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] == 2 else loss), n

    monkeypatch.setattr(sft, "sft_loss", poisoned)
    seen = {}
    real_fit = loop.fit

    def spy_fit(setup, *a, **k):
        seen["model"] = setup.model
        return real_fit(setup, *a, **k)

    monkeypatch.setattr(sft, "fit", spy_fit)
    cfg = run_cfg(addition_file, tmp_path / "nan", max_steps=4, log_every=4, speed={"prefetch": True})
    cfg["method"]["dropout"] = 0.0
    with pytest.raises(TrainingDiverged, match="loss became nan at step 2; weights were not updated"):
        tunelab.train(cfg, progress=False)
    assert real_build is not None and calls["n"] >= 2
    lora = [p for n, p in seen["model"].named_parameters() if "lora" in n]
    assert all(torch.isfinite(p).all() for p in lora)


def test_flex_attention_document_mask_equals_sdpa_block_mask_on_cpu():
    """The flex kernel the packed CUDA path uses, eager on a CPU (forward only), against the SDPA reference."""
    from torch.nn.attention.flex_attention import flex_attention

    from tunelab.kernels.varlen import document_ids, flex_block_mask, position_ids_from_lengths, sdpa_varlen

    pos = position_ids_from_lengths([[100, 80, 76], [256]])
    doc = document_ids(pos)
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 256, 16, generator=gen)
    k = torch.randn(2, 2, 256, 16, generator=gen)
    v = torch.randn(2, 2, 256, 16, generator=gen)
    out = flex_attention(q, k, v, block_mask=flex_block_mask(doc), enable_gqa=True)
    torch.testing.assert_close(out, sdpa_varlen(q, k, v, doc), rtol=1e-5, atol=1e-5)


def test_packed_rows_padded_to_max_length_give_the_same_loss():
    from tunelab.config.speed import SpeedCfg
    from tunelab.data.packing import collate_packed, pack
    from tunelab.data.templates import Tokenized
    from tunelab.stages.sft import pad_rows_to
    from tunelab.training.lm_loss import sft_loss

    gen = torch.Generator().manual_seed(0)
    samples = [Tokenized(torch.randint(1, 49152, (n,), generator=gen).tolist(),
                         [-100] * 2 + torch.randint(1, 49152, (n - 2,), generator=gen).tolist(), False)
               for n in (9, 7, 12, 5)]
    rows = pack(samples, 24)
    batch = collate_packed(rows, pad_id=0)
    fixed = pad_rows_to(batch, 32, 0)
    assert fixed["input_ids"].shape[1] == 32
    assert int(fixed["attention_mask"].sum()) == int(batch["attention_mask"].sum())
    model = lora_model(0.0)
    with torch.no_grad(), speed_context(model, TrainCfg(speed={"flex_attention": True}), torch.device("cpu"),
                                        packed=True, say=False):
        a, n_a = sft_loss(model, batch, 0.0, SpeedCfg())
        b, n_b = sft_loss(model, fixed, 0.0, SpeedCfg())
    assert n_a == n_b
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_packing_by_default_only_on_cuda_and_never_over_an_explicit_choice(monkeypatch):
    import tunelab.stages.sft as sft
    from tunelab.config import build_config

    base = {"data": {"train": "x.json"}}
    cfg = build_config(base)
    assert sft.packing_by_default(cfg) is False and cfg.data.packing is False  # CPU: as before
    monkeypatch.setattr(sft, "pick_device", lambda requested: torch.device("cuda"))
    cfg = build_config(base)
    assert sft.packing_by_default(cfg) is True and cfg.data.packing is True
    cfg = build_config({"data": {"train": "x.json", "packing": False}})
    assert sft.packing_by_default(cfg) is False and cfg.data.packing is False
    cfg = build_config({**base, "train": {"speed": {"mode": "plain"}}})
    assert sft.packing_by_default(cfg) is False
