"""After one optimizer step exactly the intended parameters changed, for every method."""

import pytest
import torch

from tests.methods.conftest import one_step, snapshot
from tunelab.config.methods import (
    AdapterCfg,
    FreezeCfg,
    IA3Cfg,
    LoraCfg,
    PrefixCfg,
    PromptCfg,
    PTuningCfg,
    PTuningV2Cfg,
    QLoraCfg,
)
from tunelab.methods import count_parameters, get_method
from tunelab.models import load_model


def changed_names(model, before) -> set[str]:
    return {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}


def test_freeze_top_layer_only(ids):
    model = get_method("freeze").apply(load_model("tiny-llama"), FreezeCfg(layers=1, head=False))
    before = snapshot(model)
    one_step(model, ids)
    changed = changed_names(model, before)
    assert changed and all(n.startswith("model.layers.1.") for n in changed)
    assert changed == {n for n, p in model.named_parameters() if p.requires_grad}


def test_freeze_patterns_and_head(ids):
    model = get_method("freeze").apply(load_model("tiny-qwen2"),
                                       FreezeCfg(layers=0, patterns=[r"layers\.0\.self_attn\.q_proj"], head=True))
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    # tiny models tie the head to the input embeddings, so the head is the embedding matrix
    assert names == {"model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.q_proj.bias",
                     "model.embed_tokens.weight"}
    before = snapshot(model)
    one_step(model, ids)
    assert changed_names(model, before) == names


def test_freeze_errors():
    with pytest.raises(ValueError, match="nothing would train"):
        FreezeCfg(layers=0, head=False)
    with pytest.raises(ValueError, match="method.patterns: 'nope' matches no parameter"):
        get_method("freeze").apply(load_model("tiny-llama"), FreezeCfg(patterns=["nope"]))


ADAPTER_CASES = [
    (LoraCfg(r=4, dora=True, rslora=True, dropout=0.0), ("lora_",)),
    (LoraCfg(r=4, init="pissa", target_modules="mlp", dropout=0.0), ("lora_",)),
    (LoraCfg(r=4, init="gaussian", modules_to_save=["lm_head"], dropout=0.0), ("lora_", "modules_to_save")),
    (QLoraCfg(r=4, dropout=0.0), ("lora_",)),
    (AdapterCfg(placement="houlsby", reduction_factor=8), (".adapter.",)),
    (IA3Cfg(), ("ia3_",)),
    (PrefixCfg(num_virtual_tokens=4, encoder_hidden_size=16), ("prompt_encoder",)),
    (PTuningV2Cfg(num_virtual_tokens=4), ("prompt_encoder",)),
    (PromptCfg(num_virtual_tokens=4), ("prompt_encoder",)),
    (PTuningCfg(num_virtual_tokens=4, encoder_hidden_size=16), ("prompt_encoder",)),
]


@pytest.mark.parametrize("cfg,marks", ADAPTER_CASES, ids=lambda c: getattr(c, "name", ""))
def test_only_added_parameters_change(cfg, marks, ids):
    model = get_method(cfg.name).apply(load_model("tiny-llama"), cfg)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(any(m in n for m in marks) for n in trainable)
    t, total = count_parameters(model)
    assert 0 < t < total
    before = snapshot(model)
    one_step(model, ids)
    changed = changed_names(model, before)
    assert changed <= trainable
    # every trainable tensor moves, except zero-initialised LoRA A's whose gradient is zero at B = 0
    assert changed >= {n for n in trainable if "lora_A" not in n or cfg.name != "lora" or cfg.init != "default"}


def test_lora_target_presets():
    model = get_method("lora").apply(load_model("tiny-llama"), LoraCfg(r=2, target_modules="attention"))
    wrapped = {n.split(".")[-4] for n, _ in model.named_parameters() if "lora_A" in n}
    assert wrapped == {"q_proj", "k_proj", "v_proj", "o_proj"}


def test_loftq_needs_qlora_and_reduces_quantization_error():
    with pytest.raises(ValueError, match="use method.name=qlora with method.init=loftq"):
        get_method("lora").apply(load_model("tiny-llama"), LoraCfg(init="loftq"))
    from peft.tuners.lora import LoraLayer

    from tunelab.methods.qlora import dequantized_linear

    original = load_model("tiny-llama").model.layers[0].self_attn.q_proj.weight.detach()
    model = get_method("qlora").apply(load_model("tiny-llama"), QLoraCfg(r=8, init="loftq", target_modules=["q_proj"]))
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    assert isinstance(layer, LoraLayer)
    dq = dequantized_linear(layer.get_base_layer()).weight
    with torch.no_grad():
        err_plain = (original - dq).norm()
        err_loftq = (original - dq - layer.get_delta_weight("default")).norm()
        # the adapter is the best rank-8 approximation of the quantization error: check against the SVD directly
        s = torch.linalg.svdvals(original - dq)
    assert err_loftq < err_plain
    torch.testing.assert_close(err_loftq ** 2, (s[8:] ** 2).sum(), rtol=1e-3, atol=1e-6)
