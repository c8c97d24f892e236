"""What trains of a VLM (LLaVA, Idefics3, Qwen2-VL, Qwen2.5-VL), by module family: LoRA/QLoRA on the language
model, vision tower and projector frozen unless switched on; full fine-tuning of tiny Idefics3 (SmolVLM family)
end to end with reload."""

from __future__ import annotations

import pytest
import torch

from tunelab.config.methods import FreezeCfg, FullCfg, LoraCfg, QLoraCfg
from tunelab.methods import get_method
from tunelab.models import load_model
from tunelab.models.vision import family_of, part_of
from tunelab.training.vision import method_cfg_for_vision, set_trainable_parts


def prepared(name, cfg):
    model = load_model(name)
    method = get_method(cfg.name)
    model = method.apply(model, method_cfg_for_vision(model, cfg))
    set_trainable_parts(model, cfg)
    return model


def trainable_parts(model) -> dict[str, bool]:
    """Whether any parameter of each family (vision, projector, language) trains."""
    fam = family_of(model.get_base_model() if hasattr(model, "get_base_model") else model)
    out = {"vision": False, "projector": False, "language": False}
    for n, p in model.named_parameters():
        out[part_of(n, fam)] |= p.requires_grad
    return out


@pytest.mark.parametrize("name", ["tiny-llava", "tiny-idefics3", "tiny-qwen2-vl", "tiny-qwen2.5-vl"])
@pytest.mark.parametrize("cfg, expected", [
    (LoraCfg(r=4), {"vision": False, "projector": False, "language": True}),
    (LoraCfg(r=4, train_projector=True), {"vision": False, "projector": True, "language": True}),
    (LoraCfg(r=4, train_vision=True), {"vision": True, "projector": False, "language": True}),
    (FullCfg(), {"vision": False, "projector": False, "language": True}),
    (FullCfg(train_vision=True, train_projector=True), {"vision": True, "projector": True, "language": True}),
    (FreezeCfg(layers=1, head=False), {"vision": False, "projector": False, "language": True}),
], ids=["lora", "lora+projector", "lora+vision", "full", "full+all", "freeze"])
def test_families_train_as_switched(name, cfg, expected):
    assert trainable_parts(prepared(name, cfg)) == expected


def test_freeze_picks_the_language_models_top_layer():
    model = prepared("tiny-llava", FreezeCfg(layers=1, head=False))
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all(n.startswith("model.language_model.layers.1.") for n in trained)


def test_qlora_quantizes_only_the_language_model_and_trains_the_projector_in_full():
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb

    model = prepared("tiny-llava", QLoraCfg(r=4, compute_dtype="float32", train_projector=True))
    linears = {n: type(m) for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, bnb.nn.Linear4bit))}
    assert any(t is bnb.nn.Linear4bit for n, t in linears.items() if "language_model" in n)
    assert all(t is not bnb.nn.Linear4bit for n, t in linears.items() if "vision_tower" in n or "projector" in n)
    assert trainable_parts(model) == {"vision": False, "projector": True, "language": True}


def test_full_finetune_of_tiny_idefics3_trains_and_reloads(shapes, tmp_path):
    from safetensors.torch import load_file

    from tunelab.api import train
    from tunelab.data.formats import parse_records
    from tunelab.data.io import read_records
    from tunelab.data.vision import collate_vision, tokenize_vision
    from tunelab.models.tiny_vlm import tiny_vlm_dir

    run = train({"model": {"name": "tiny-idefics3"}, "data": {"train": str(shapes), "max_length": 96},
                 "method": {"name": "full", "train_projector": True},
                 "train": {"max_steps": 4, "batch_size": 4, "lr": 1e-3, "report": False},
                 "output_dir": str(tmp_path / "r")}, progress=False)
    losses = [m["loss"] for m in run.metrics() if "loss" in m]
    assert losses[-1] < losses[0]
    base = load_file(str(tiny_vlm_dir("tiny-idefics3") / "model.safetensors"))
    saved = load_file(str(run.path / "model" / "model.safetensors"))
    changed = {k.split(".")[1] if k.startswith("model.") else k.split(".")[0]
               for k in saved if not torch.equal(saved[k], base.get(k, saved[k] * 0 + 1))}
    assert "vision_model" not in changed and {"connector", "text_model"} <= changed
    model, _, template = run.load_model(device="cpu")
    proc = run.load_processor()
    convs, _ = parse_records(read_records(shapes))
    batch = collate_vision([tokenize_vision(proc, template, convs[0], 96)], proc.tokenizer.pad_token_id)
    batch.pop("labels")
    from transformers import AutoModelForImageTextToText

    ref = AutoModelForImageTextToText.from_pretrained(str(run.path / "model")).eval()
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, ref(**batch).logits)
