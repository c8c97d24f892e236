"""Save -> reload gives identical logits; merged == unmerged where a merge exists; NotMergeable otherwise."""

import pytest
import torch

from tests.methods.conftest import perturb
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
from tunelab.methods import NotMergeable, get_method
from tunelab.models import load_model

CASES = [
    FreezeCfg(layers=1),
    LoraCfg(r=4, dora=True, dropout=0.0),
    LoraCfg(r=4, rslora=True, init="pissa", dropout=0.0),
    QLoraCfg(r=4, dropout=0.0),
    AdapterCfg(placement="houlsby", reduction_factor=8),
    IA3Cfg(),
    PrefixCfg(num_virtual_tokens=4, encoder_hidden_size=16),
    PTuningV2Cfg(num_virtual_tokens=4),
    PromptCfg(num_virtual_tokens=4, init_text="You are a helpful assistant", tokenizer="tiny-llama"),
    PTuningCfg(num_virtual_tokens=4, encoder_hidden_size=16),
]
MERGEABLE = {"freeze", "lora", "qlora", "ia3"}


def trained(cfg):
    method = get_method(cfg.name)
    model = method.apply(load_model("tiny-llama"), cfg)
    perturb(model)
    return method, model.eval()


@pytest.mark.parametrize("cfg", CASES, ids=lambda c: c.name)
def test_save_reload_identical_logits(cfg, ids, tmp_path):
    method, model = trained(cfg)
    with torch.no_grad():
        before = model(input_ids=ids).logits
        plain = load_model("tiny-llama")(input_ids=ids).logits
    method.save(model, tmp_path / method.WEIGHTS_DIR)
    reloaded = method.load_for_inference(load_model("tiny-llama"), tmp_path / method.WEIGHTS_DIR).eval()
    with torch.no_grad():
        after = reloaded(input_ids=ids).logits
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    assert after.shape[-2] >= plain.shape[-2] and not torch.allclose(after[..., -12:, :], plain, atol=1e-4)
    if method.WEIGHTS_DIR == "adapter" and cfg.name != "adapter":  # standard PEFT folder
        assert (tmp_path / "adapter" / "adapter_config.json").is_file()
        from peft import PeftConfig

        assert PeftConfig.from_pretrained(str(tmp_path / "adapter")).peft_type.value.lower().replace("_", "") in (
            "lora", "ia3", "prefixtuning", "prompttuning", "ptuning")


@pytest.mark.parametrize("cfg", [c for c in CASES if c.name in MERGEABLE], ids=lambda c: c.name)
def test_merged_equals_unmerged(cfg, ids):
    method, model = trained(cfg)
    with torch.no_grad():
        unmerged = model(input_ids=ids).logits
        merged_model = method.merge(model)
        merged = merged_model(input_ids=ids).logits
    names = [n for n, _ in merged_model.named_parameters()]
    assert not any(k in n for n in names for k in ("lora_", "ia3_", "base_layer"))
    if cfg.name == "qlora":  # merged into plain float layers: no 4-bit module left
        import bitsandbytes as bnb

        assert not any(isinstance(m, bnb.nn.Linear4bit) for m in merged_model.modules())
    # qlora computes in bf16 before the merge and in fp32 after it
    tol = {"rtol": 1e-2, "atol": 1e-2} if cfg.name == "qlora" else {"rtol": 1e-4, "atol": 1e-5}
    torch.testing.assert_close(merged, unmerged, **tol)


@pytest.mark.parametrize("cfg", [c for c in CASES if c.name not in MERGEABLE], ids=lambda c: c.name)
def test_not_mergeable_explains_the_alternative(cfg):
    method, model = trained(cfg)
    with pytest.raises(NotMergeable, match="cannot be folded into the base weights.*[Ss]erve the base model"):
        method.merge(model)


def test_prompt_init_from_text_uses_token_embeddings():
    from tunelab.models import load_tokenizer

    cfg = PromptCfg(num_virtual_tokens=6, init_text="hello world", tokenizer="tiny-llama")
    base = load_model("tiny-llama")
    expected_ids = load_tokenizer("tiny-llama")("hello world", add_special_tokens=False)["input_ids"]
    table = base.get_input_embeddings().weight.detach().clone()
    model = get_method("prompt").apply(base, cfg)
    vectors = model.prompt_encoder["default"].embedding.weight.detach()
    repeated = (expected_ids * 6)[:6]
    torch.testing.assert_close(vectors, table[repeated])
