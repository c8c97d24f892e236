"""train.speed in the SFT path: the chunked loss equals the plain one (value and gradients), in a real run too.

Tolerance: fp32 on CPU, the two paths differ only in summation order -> rtol 1e-5, atol 1e-6 (loss)
and atol 1e-6 (gradients, whose entries are ~1e-3..1e-1).
"""


import pytest
import torch

import tunelab
from tunelab.config import LoraCfg
from tunelab.config.speed import SpeedCfg
from tunelab.kernels.lora import FusedLoraLinear
from tunelab.kernels.train import chunked_causal_lm_loss, lm_parts, speed_context
from tunelab.kernels.varlen import position_ids_from_lengths
from tunelab.methods import get_method
from tunelab.models import load_model
from tunelab.training.lm_loss import sft_loss

SPEED = SpeedCfg(chunked_ce=True, ce_chunk=5)  # a chunk smaller than the batch: several chunks plus a remainder
PLAIN = SpeedCfg(chunked_ce=False)


def padded_batch(seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 49152, (3, 9), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, 4:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :3] = -100  # the prompt part: not a target
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def make_model(method: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = load_model("tiny-llama")
    if method == "lora":
        model = get_method("lora").apply(model, LoraCfg(r=4, alpha=8, dropout=0.0))  # no random draws
        for name, p in model.named_parameters():  # B starts at zero; make the adapter matter
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.1)
    return model


def loss_and_grads(model, batch, speed, smoothing=0.0):
    model.zero_grad(set_to_none=True)
    loss, count = sft_loss(model, batch, smoothing, speed)
    (loss / count).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), count, grads


@pytest.mark.parametrize("method", ["full", "lora"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_chunked_loss_and_grads_equal_plain(method, smoothing):
    model = make_model(method)
    batch = padded_batch()
    ref_loss, ref_n, ref_g = loss_and_grads(model, batch, PLAIN, smoothing)
    loss, n, grads = loss_and_grads(model, batch, SPEED, smoothing)
    assert n == ref_n == int((batch["labels"][:, 1:] != -100).sum())
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    assert grads.keys() == ref_g.keys() and len(grads) > 0
    if method == "full":  # tied weights: lm_head and embeddings share one Parameter, its gradient has both parts
        assert any("embed_tokens" in k for k in grads)
    for name in ref_g:
        torch.testing.assert_close(grads[name], ref_g[name], rtol=1e-4, atol=1e-6, msg=name)


def test_packed_batch_through_chunked_path_equals_separate_samples():
    model = make_model("lora")
    gen = torch.Generator().manual_seed(1)
    lengths = [[4, 5, 3], [7, 5]]
    pos = position_ids_from_lengths(lengths)                              # (2, 12), restarts at each sample
    ids = torch.randint(0, 49152, pos.shape, generator=gen)
    labels = ids.masked_fill(pos == 0, -100)                              # no prediction across a boundary
    packed = {"input_ids": ids, "position_ids": pos, "labels": labels, "attention_mask": torch.ones_like(ids)}
    with torch.no_grad():
        loss, count = sft_loss(model, packed, 0.0, SPEED)
        # independent reference: each sample on its own, plain path, summed
        ref, ref_count = 0.0, 0
        for row, row_lengths in enumerate(lengths):
            start = 0
            for n in row_lengths:
                one = {"input_ids": ids[row:row + 1, start:start + n], "labels": ids[row:row + 1, start:start + n],
                       "attention_mask": torch.ones(1, n, dtype=torch.long)}
                part, c = sft_loss(model, one, 0.0, PLAIN)
                ref, ref_count = ref + part, ref_count + c
                start += n
    assert count == ref_count == 12 + 12 - 5
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)


def test_prompt_tuning_falls_back_to_plain_with_a_note(capsys, monkeypatch):
    from tunelab.config.methods import PromptCfg
    from tunelab.kernels import train as speed_glue

    monkeypatch.setattr(speed_glue, "_NOTED", set())  # notes print once per process; earlier tests may have

    torch.manual_seed(0)
    model = get_method("prompt").apply(load_model("tiny-llama"), PromptCfg(num_virtual_tokens=4))
    reason = lm_parts(model)
    assert isinstance(reason, str) and "virtual tokens" in reason
    batch = padded_batch()
    assert chunked_causal_lm_loss(model, {"input_ids": batch["input_ids"]}, batch["labels"]) is None
    assert "using the plain loss" in capsys.readouterr().err
    with torch.no_grad():
        torch.testing.assert_close(sft_loss(model, batch, 0.0, SPEED)[0], sft_loss(model, batch, 0.0, PLAIN)[0])


def test_speed_context_fuses_lora_and_unfuses_before_saving(tmp_path):
    from tunelab.config import TrainCfg

    model = make_model("lora")
    keys = set(model.state_dict())
    cfg = TrainCfg(speed={"fused_lora": True})  # true: on any device (plain torch); compile_layers auto: CUDA only
    batch = padded_batch()
    ref_loss, _, ref_g = loss_and_grads(model, batch, SPEED)
    with speed_context(model, cfg, torch.device("cpu"), say=False) as plan:
        assert "fused_lora" in plan and "compile_layers" not in plan
        assert sum(isinstance(m, FusedLoraLinear) for m in model.modules()) == 14  # 7 linears x 2 layers
        assert set(model.state_dict()) == keys  # the wrappers keep PEFT's key names (mid-run checkpoints)
        loss, _, grads = loss_and_grads(model, batch, SPEED)
    assert not any(isinstance(m, FusedLoraLinear) for m in model.modules()) and set(model.state_dict()) == keys
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    fused = {n.replace(".inner.", "."): g for n, g in grads.items()}  # names inside the fused wrapper
    assert fused.keys() == ref_g.keys()
    for name in ref_g:
        torch.testing.assert_close(fused[name], ref_g[name], rtol=1e-4, atol=1e-6, msg=name)
    get_method("lora").save(model, tmp_path / "adapter")
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    assert saved and not any(".inner." in k for k in saved)
    with speed_context(model, TrainCfg(), torch.device("cpu"), say=False) as plan:
        assert any(isinstance(m, FusedLoraLinear) for m in model.modules())  # auto: on a CPU too
        assert "fused_lora" in plan.on
    assert not any(isinstance(m, FusedLoraLinear) for m in model.modules())
    with speed_context(model, TrainCfg(speed={"fused_lora": False}), torch.device("cpu"), say=False) as plan:
        assert not any(isinstance(m, FusedLoraLinear) for m in model.modules())
        assert plan.off["fused_lora"] == "train.speed.fused_lora=false"


def test_bad_speed_key_is_a_config_error():
    from tunelab.config import ConfigError, build_config

    with pytest.raises(ConfigError, match=r"train\.speed\.chunked") as err:
        build_config({"data": {"train": "x.json"}, "train": {"speed": {"chunked": True}}})
    assert "chunked_ce" in str(err.value)  # the did-you-mean hint names the real key


@pytest.mark.parametrize("packing", [False, True])
def test_train_run_same_first_loss_with_speed_on_and_off(tmp_path, addition_file, packing, monkeypatch):
    import tunelab.kernels.train as glue

    calls = []
    real = glue.linear_cross_entropy
    monkeypatch.setattr(glue, "linear_cross_entropy", lambda *a, **k: calls.append(1) or real(*a, **k))

    def run(chunked: bool):
        cfg = {"model": {"name": "tiny-llama"},
               "data": {"train": str(addition_file), "max_length": 64, "val_size": 0.25, "packing": packing},
               "method": {"name": "lora", "r": 4, "alpha": 8},
               "train": {"max_steps": 2, "batch_size": 4, "lr": 1e-2, "seed": 0, "report": False,
                         "speed": {"chunked_ce": chunked, "ce_chunk": 16}},
               "output_dir": str(tmp_path / f"run-{chunked}")}
        result = tunelab.train(cfg, progress=False)
        return [m["loss"] for m in result.metrics() if "loss" in m], result

    on, run_on = run(True)
    assert calls  # the chunked kernel really ran (no silent fallback)
    calls.clear()
    off, _ = run(False)
    assert not calls
    assert len(on) == len(off) == 2
    assert on[0] == pytest.approx(off[0], rel=1e-5)
    assert on[1] == pytest.approx(off[1], rel=1e-3)  # after one update: still the same trajectory
    assert run_on.config.train.speed.ce_chunk == 16
    model, _, _ = run_on.load_model(device="cpu")  # the adapter saved with PEFT's own key names reloads
    assert any("lora_A" in n for n, _ in model.named_parameters())


def test_compiled_layers_share_one_graph_first_layer_included(monkeypatch):
    """Frozen embeddings (LoRA) leave the first layer's input without grad; the speed path's hook makes it require
    grad so the compiler traces the layer once for all layers, with the loss and gradients unchanged."""
    from torch._dynamo.utils import counters

    from tunelab.config import TrainCfg
    from tunelab.kernels import regions

    real_compile = regions.compile_layers
    monkeypatch.setattr(regions, "compile_layers", lambda m, **kw: real_compile(m, backend="aot_eager", **kw))
    model = make_model("lora")
    batch = padded_batch()
    ref_loss, _, ref_g = loss_and_grads(model, batch, SPEED)
    torch._dynamo.reset()
    counters.clear()
    cfg = TrainCfg(speed={"fused_lora": True, "compile_layers": True})
    embed = model.get_input_embeddings()
    with speed_context(model, cfg, torch.device("cpu"), say=False) as plan:
        assert "compile_layers" in plan
        loss, _, grads = loss_and_grads(model, batch, SPEED)
        assert counters["stats"]["unique_graphs"] == 1          # 2 decoder layers, one graph
        with torch.no_grad():
            assert not embed(batch["input_ids"]).requires_grad  # evaluation: no gradient asked for
    assert not embed(batch["input_ids"]).requires_grad          # the hook is gone after training
    torch._dynamo.reset()
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    fused = {n.replace(".inner.", ".").replace(".layer.", "."): g for n, g in grads.items()}
    assert fused.keys() == ref_g.keys()
    for name in ref_g:
        torch.testing.assert_close(fused[name], ref_g[name], rtol=1e-4, atol=1e-6, msg=name)
