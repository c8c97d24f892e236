"""QLoRA quantizes while loading: a model folder on CUDA goes through from_pretrained with a 4-bit
BitsAndBytesConfig and a device_map (transformers quantizes layer by layer as it loads), never through
a full-precision `model.to(device)`. Checked on a CPU by recording what the loader asks transformers for."""

import pytest
import torch

from tunelab.config import build_config
from tunelab.methods import get_method
from tunelab.models import loader


class FakeModel(torch.nn.Module):
    def to(self, *a, **k):  # a full-precision move to the GPU is exactly what must not happen
        raise AssertionError("the quantized load moved a full-precision model")


def test_qlora_folder_on_cuda_loads_quantized_through_from_pretrained(tmp_path, monkeypatch):
    pytest.importorskip("bitsandbytes")
    transformers = pytest.importorskip("transformers")
    (tmp_path / "config.json").write_text("{}")
    seen = {}

    def fake_from_pretrained(path, **kwargs):
        seen.update(kwargs, path=path)
        return FakeModel()

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake_from_pretrained)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    cfg = build_config({"data": {"train": "x.json"}, "model": {"name": str(tmp_path)}, "method": {"name": "qlora"}})
    settings = get_method("qlora").load_settings(cfg.method)
    assert settings == {"quant_type": "nf4", "double_quant": True, "compute_dtype": "bfloat16"}
    model = loader.load_model(str(tmp_path), "auto", torch.device("cuda"), quantize=settings)
    q = seen["quantization_config"]
    assert q.load_in_4bit and q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_use_double_quant
    assert q.bnb_4bit_compute_dtype == torch.bfloat16 and seen["dtype"] == torch.bfloat16
    assert seen["device_map"] == {"": 0} and seen["path"] == str(tmp_path)
    assert model.tunelab_quantized == settings  # qlora.apply then skips its own quantize()


def test_loftq_keeps_the_full_precision_load():
    cfg = build_config({"data": {"train": "x.json"}, "method": {"name": "qlora", "init": "loftq"}})
    assert get_method("qlora").load_settings(cfg.method) is None


def test_apply_freezes_the_base_and_keeps_its_dtypes():
    pytest.importorskip("bitsandbytes")
    from tunelab.models import load_model

    torch.manual_seed(0)
    model = load_model("tiny-llama").to(torch.bfloat16)
    cfg = build_config({"data": {"train": "x.json"}, "method": {"name": "qlora", "r": 4}})
    model = get_method("qlora").apply(model, cfg.method)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    emb = model.get_base_model().get_input_embeddings().weight
    assert emb.dtype == torch.bfloat16  # not upcast to fp32


def test_merge_of_a_bf16_model_runs_in_one_dtype():
    """The merged QLoRA model (dequantized W4 + delta, summed in float32) takes the dtype of the model's other
    weights, so a bf16 model's merge runs without autocast (it held float32 linears among bf16 norms)."""
    pytest.importorskip("bitsandbytes")
    from tunelab.methods.qlora import merge
    from tunelab.models import load_model

    torch.manual_seed(0)
    cfg = build_config({"data": {"train": "x.json"}, "method": {"name": "qlora", "r": 4}})
    model = get_method("qlora").apply(load_model("tiny-llama").to(torch.bfloat16), cfg.method)
    ids = torch.tensor([[1, 5, 9, 13]])
    with torch.no_grad():
        unmerged = model(input_ids=ids).logits.float()
        merged = merge(model)
        assert {p.dtype for p in merged.parameters()} == {torch.bfloat16}
        torch.testing.assert_close(merged(input_ids=ids).logits.float(), unmerged, rtol=5e-2, atol=5e-2)
