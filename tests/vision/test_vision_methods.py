"""What trains of a VLM (LLaVA, Idefics3, Qwen2-VL, Qwen2.5-VL), by module family: LoRA/QLoRA on the language
model, vision tower and projector frozen unless switched on; full fine-tuning end to end with reload for every
family (the saved layout differs from the live model's for LLaVA and Qwen)."""

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


@pytest.mark.parametrize("name", ["tiny-idefics3", "tiny-llava", "tiny-qwen2-vl", "tiny-qwen2.5-vl"])
def test_full_finetune_trains_language_and_projector_and_reloads(name, shapes, tmp_path):
    """The run's model/ is in the checkpoint's original layout (LLaVA's and Qwen's differ from the live
    model's names); the reloaded run differs from the base exactly in the parts that trained, and gives the
    logits transformers' own loading of that folder gives."""
    from transformers import AutoModelForImageTextToText

    from tunelab.api import train
    from tunelab.data.formats import parse_records
    from tunelab.data.io import read_records
    from tunelab.data.vision import collate_vision, tokenize_vision

    run = train({"model": {"name": name}, "data": {"train": str(shapes), "max_length": 96},
                 "method": {"name": "full", "train_projector": True},
                 "train": {"max_steps": 4, "batch_size": 4, "lr": 1e-3, "report": False},
                 "output_dir": str(tmp_path / "r")}, progress=False)
    losses = [m["loss"] for m in run.metrics() if "loss" in m]
    assert losses[-1] < losses[0]
    model, _, template = run.load_model(device="cpu")
    base = dict(load_model(name).named_parameters())
    family = family_of(model)
    changed = {part_of(n, family) for n, p in model.named_parameters() if not torch.equal(p, base[n])}
    assert changed == {"projector", "language"}  # the vision tower stayed as it was
    proc = run.load_processor()
    convs, _ = parse_records(read_records(shapes))
    batch = collate_vision([tokenize_vision(proc, template, convs[0], 96)], proc.tokenizer.pad_token_id)
    batch.pop("labels")
    ref = AutoModelForImageTextToText.from_pretrained(str(run.path / "model")).eval()
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, ref(**batch).logits)
