"""Every artifact says what it is: the bottleneck adapter is not written under PEFT's file names (old runs that
were still load), and an adapter records its base so that PEFT's own loaders need no extra arguments."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import tunelab
from tunelab.config.methods import AdapterCfg
from tunelab.methods import get_method
from tunelab.models import load_model
from tunelab.models import loader


def _trained_bottleneck():
    torch.manual_seed(0)
    method = get_method("adapter")
    model = method.apply(load_model("tiny-llama"), AdapterCfg(reduction_factor=4))
    for n, p in model.named_parameters():
        if p.requires_grad:
            p.data.normal_(0, 0.05)  # a trained adapter: different from the base
    return method, model.eval()


def test_bottleneck_files_are_its_own_and_old_names_still_load(tmp_path: Path) -> None:
    method, model = _trained_bottleneck()
    ids = torch.tensor([[1, 5, 9, 12, 7]])
    with torch.no_grad():
        want = model(input_ids=ids).logits
    out = tmp_path / "adapter"
    method.save(model, out)
    assert sorted(p.name for p in out.iterdir()) == ["bottleneck_adapter.safetensors", "bottleneck_config.json"]
    from peft import PeftConfig

    with pytest.raises(ValueError):  # PEFT does not take it for one of its adapters
        PeftConfig.from_pretrained(str(out))
    with torch.no_grad():
        got = method.load_for_inference(load_model("tiny-llama"), out)(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    old = tmp_path / "old"  # a run folder written before the rename
    old.mkdir()
    shutil.copy(out / "bottleneck_adapter.safetensors", old / "adapter_model.safetensors")
    settings = json.loads((out / "bottleneck_config.json").read_text())
    settings.pop("base_model_name_or_path")
    (old / "adapter_config.json").write_text(json.dumps(settings))
    with torch.no_grad():
        got = method.load_for_inference(load_model("tiny-llama"), old)(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_auto_peft_loads_a_run_on_a_local_hf_folder_without_arguments(tmp_path: Path) -> None:
    from peft import AutoPeftModelForCausalLM

    base = tmp_path / "my-base"
    load_model("tiny-llama").save_pretrained(base)
    tunelab.models.load_tokenizer("tiny-llama").save_pretrained(base)
    rows = [{"instruction": f"Say {i}.", "output": f"{i} {i} {i}"} for i in range(4)]
    (tmp_path / "d.json").write_text(json.dumps(rows), encoding="utf-8")
    run = tunelab.train({"model": {"name": str(base)}, "output_dir": str(tmp_path / "run"),
                         "data": {"train": str(tmp_path / "d.json"), "max_length": 32, "val_size": 0.0},
                         "method": {"name": "lora", "r": 4, "alpha": 8},
                         "train": {"max_steps": 2, "batch_size": 2, "lr": 5e-2, "report": False}}, progress=False)
    adapter = run.path / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base.resolve())
    assert run.info["base_model_name_or_path"] == str(base.resolve())
    ids = torch.tensor([[1, 5, 9, 12, 7]])
    peft_model = AutoPeftModelForCausalLM.from_pretrained(str(adapter)).eval()  # no base named: PEFT finds it
    ours, _, _ = run.load_model(device="cpu")
    with torch.no_grad():
        torch.testing.assert_close(peft_model(input_ids=ids).logits, ours(input_ids=ids).logits, rtol=1e-5,
                                   atol=1e-5)
        assert not torch.allclose(ours(input_ids=ids).logits, load_model(str(base))(input_ids=ids).logits,
                                  atol=1e-4)


def test_every_kind_of_base_names_its_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    converted = tmp_path / "cache" / "SmolLM2-converted"
    monkeypatch.setattr(loader, "gguf_as_hf_dir", lambda path: converted)
    monkeypatch.setattr(loader, "smollm2_gguf_path", lambda: tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf")
    assert loader.base_source("smollm2-135m") == {"base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct",
                                                  "base_model_path": str(converted)}
    gguf = tmp_path / "mine.gguf"
    gguf.write_bytes(b"GGUF")
    assert loader.base_source(str(gguf)) == {"base_model_name_or_path": str(converted),
                                             "base_model_path": str(converted)}
    assert loader.base_source("tiny-llama") == {"base_model_name_or_path": None, "base_model_path": None}


def test_saving_an_adapter_of_a_hub_id_base_is_silent_and_keeps_the_embeddings_out(tmp_path: Path) -> None:
    """A base recorded by hub id (as the bundled GGUF models are): PEFT's offline vocabulary check warned on
    every save; the adapter is written without that warning and, as before, without the embedding weights."""
    import warnings

    from safetensors.torch import load_file

    from tunelab.config.methods import LoraCfg

    method = get_method("lora")
    model = method.apply(load_model("tiny-llama"), LoraCfg(r=4, alpha=8))
    for cfg in model.peft_config.values():
        cfg.base_model_name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        method.save(model, tmp_path / "adapter")
    assert not [str(w.message) for w in caught if "config file" in str(w.message)]
    keys = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    assert keys and all("lora_" in k for k in keys)
