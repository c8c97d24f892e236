"""LoRA and full: only the intended parameters train; save -> load gives identical logits; merge is exact."""

import torch

from tunelab.config import FullCfg, LoraCfg
from tunelab.methods import count_parameters, get_method
from tunelab.models import load_model


def ids():
    return torch.randint(0, 49152, (2, 12), generator=torch.Generator().manual_seed(0))


def perturb_lora(model):
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)


def test_lora_trains_only_adapters_and_reloads_identically(tmp_path):
    lora = get_method("lora")
    model = lora.apply(load_model("tiny-llama"), LoraCfg(r=4, alpha=8, dropout=0.0))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    t, total = count_parameters(model)
    assert 0 < t < total
    perturb_lora(model)
    model.eval()
    x = ids()
    before = model(input_ids=x).logits
    lora.save(model, tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    reloaded = lora.load_for_inference(load_model("tiny-llama"), tmp_path / "adapter")
    torch.testing.assert_close(reloaded(input_ids=x).logits, before, rtol=0, atol=0)
    plain = load_model("tiny-llama")(input_ids=x).logits
    assert not torch.allclose(plain, before)


def test_lora_merge_matches_unmerged(tmp_path):
    lora = get_method("lora")
    model = lora.apply(load_model("tiny-qwen2"), LoraCfg(r=4, alpha=8, dropout=0.0, target_modules="attention"))
    perturb_lora(model)
    model.eval()
    x = ids()
    unmerged = model(input_ids=x).logits
    merged = lora.merge(model)
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(merged(input_ids=x).logits, unmerged, rtol=1e-4, atol=1e-5)


def test_lora_bad_target_names_modules():
    import pytest

    with pytest.raises(ValueError, match="method.target_modules.*matches no module.*q_proj"):
        get_method("lora").apply(load_model("tiny-llama"), LoraCfg(target_modules=["qkv"]))


def test_full_save_and_load_state(tmp_path):
    full = get_method("full")
    model = full.apply(load_model("tiny-llama"), FullCfg())
    assert all(p.requires_grad for p in model.parameters())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    full.save(model, tmp_path / "model")
    fresh = load_model("tiny-llama")
    full.load_state(fresh, tmp_path / "model")
    x = ids()
    torch.testing.assert_close(fresh(input_ids=x).logits, model(input_ids=x).logits, rtol=0, atol=0)
