"""A LoRA run on a tiny LLaVA, end to end: what trained, reload == trained, merged == unmerged, export loads in
transformers with its processor, chat with an image through the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.vision.conftest import reload_against_peft
from tunelab.data.formats import parse_records
from tunelab.data.io import read_records


def sample_inputs(proc, template, shapes, i=1):
    from tunelab.data.vision import collate_vision, tokenize_vision

    convs, _ = parse_records(read_records(shapes))
    batch = collate_vision([tokenize_vision(proc, template, convs[i], 256)], proc.tokenizer.pad_token_id)
    return {k: v for k, v in batch.items() if k != "labels"}


def test_training_changes_adapters_and_projector_only(llava_run, llava_dir):
    metrics = [m for m in llava_run.metrics() if "loss" in m]
    assert metrics[-1]["loss"] < metrics[0]["loss"]
    cfg = json.loads((llava_run.path / "adapter" / "adapter_config.json").read_text())
    assert cfg["target_modules"] and all(".language_model." in t for t in cfg["target_modules"])
    assert cfg["modules_to_save"] == ["model.multi_modal_projector"]
    saved = load_file(str(llava_run.path / "adapter" / "adapter_model.safetensors"))
    assert not any("vision_tower" in k for k in saved)  # the vision tower stayed frozen: nothing of it is saved
    base = load_file(str(llava_dir / "model.safetensors"))
    proj = {k.split("multi_modal_projector.")[1].replace("modules_to_save.default.", ""): v
            for k, v in saved.items() if "multi_modal_projector" in k}
    assert proj and any(not torch.equal(v, base[f"multi_modal_projector.{k}"]) for k, v in proj.items())
    info = llava_run.info
    assert 0 < info["trainable_params"] < info["total_params"]


def test_reload_gives_the_logits_of_an_independent_peft_load(llava_run, llava_dir, shapes):
    r = reload_against_peft(llava_run, llava_dir, lambda proc, template: sample_inputs(proc, template, shapes))
    model, proc, inputs, got, want, plain = r.model, r.proc, r.inputs, r.got, r.want, r.plain
    assert torch.equal(got, want)
    assert not torch.allclose(got, plain, atol=1e-4)  # training changed the answer to an image prompt
    no_image = {k: v for k, v in inputs.items() if k != "pixel_values"}
    no_image["input_ids"] = no_image["input_ids"].masked_fill(no_image["input_ids"] == proc.image_token_id, 0)
    with torch.no_grad():
        assert not torch.allclose(model(**no_image).logits, got, atol=1e-4)  # the image reaches the answer


def test_merged_equals_unmerged_and_export_loads_with_its_processor(llava_run, shapes, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model, _, template = llava_run.load_model(device="cpu")
    merged, _, _ = llava_run.load_model(device="cpu", merged=True)
    inputs = sample_inputs(llava_run.load_processor(), template, shapes)
    out = llava_run.export("merged", tmp_path / "merged")
    exported = AutoModelForImageTextToText.from_pretrained(str(out)).eval()
    proc = AutoProcessor.from_pretrained(str(out))
    with torch.no_grad():
        a, b = model(**inputs).logits, merged(**inputs).logits
        c = exported(**sample_inputs(proc, proc.chat_template, shapes)).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b, c, atol=1e-5, rtol=1e-5)
    assert proc.chat_template == template


def test_processor_round_trip_through_the_run_folder(llava_run, llava_dir, shapes):
    from tunelab.models.vision import load_processor

    saved, base = llava_run.load_processor(), load_processor(llava_dir)
    a, b = sample_inputs(saved, llava_run.chat_template, shapes), sample_inputs(base, base.chat_template, shapes)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_chat_cli_answers_an_image_like_run_chat(llava_run, shapes):
    from typer.testing import CliRunner

    from tunelab.cli import app

    image = str(shapes.parent / "img" / "1.png")
    expected = llava_run.chat("What colour?", images=[image], max_new_tokens=6, repetition_penalty=1.1)
    res = CliRunner().invoke(app, ["chat", str(llava_run.path), "--image", image, "--prompt", "What colour?",
                                   "--max-new-tokens", "6"])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == expected


def test_text_run_refuses_an_image(tmp_path, shapes):
    from typer.testing import CliRunner

    from tunelab.cli import app

    res = CliRunner().invoke(app, ["chat", "tests/fixtures/run_v0", "--image", str(shapes), "--prompt", "x"])
    assert res.exit_code != 0 and "text-only run; it cannot read images" in res.output


def test_vision_switches_on_a_text_model_are_an_error(tmp_path, shapes):
    from tunelab.api import train
    from tunelab.models.vision import VisionModelError

    with pytest.raises(VisionModelError, match="method.train_vision: the model has no vision tower"):
        train({"model": {"name": "tiny-llama"}, "data": {"train": str(shapes)},
               "method": {"name": "lora", "train_vision": True}, "output_dir": str(tmp_path / "r")}, progress=False)


def test_the_documented_example_trains_through_the_cli(tmp_path, monkeypatch):
    from pathlib import Path

    from typer.testing import CliRunner

    from tunelab.cli import app

    repo = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(repo)  # the example's data path is relative to the repository root
    res = CliRunner().invoke(app, ["train", "examples/sft_vision_lora.yaml", "train.max_steps=2",
                                   "train.eval_every=null", "train.report=false", f"output_dir={tmp_path / 'r'}",
                                   "--quiet"])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["data"]["format"] == "vision" and summary["data"]["train_images"] == 14


def test_a_stage_without_image_support_refuses_a_vision_model(tmp_path, shapes):
    from tunelab.api import train
    from tunelab.models.vision import VisionModelError

    with pytest.raises(VisionModelError, match="stage: dpo does not train vision-language models yet"):
        train({"model": {"name": "tiny-llava"}, "stage": "dpo", "data": {"train": str(shapes)},
               "method": {"name": "lora"}, "output_dir": str(tmp_path / "r")}, progress=False)
