"""Qwen2-VL and Qwen2.5-VL end to end, with or without torchvision: batches of images of different sizes give
each sample's own logits (flattened patches concatenated, M-RoPE positions from mm_token_type_ids), a LoRA run
reloads to an independent PEFT load's logits, merged == unmerged, the merged export loads in transformers,
chat with an image equals a direct generate and serve's answer, eval batches mixed image sizes like one at a
time, and a hub-layout folder loads without its video processor."""

from __future__ import annotations

import json
import logging
import pickle
import shutil
import warnings

import pytest
import torch

from tests.vision.conftest import reload_against_peft
from tunelab.data.formats import Conversation
from tunelab.data.images import resolve_image
from tunelab.models.image_only import has_torchvision

FAMILIES = ["tiny-qwen2-vl", "tiny-qwen2.5-vl"]


def conversation(folder, size, colour, answer="red", image=True) -> Conversation:
    from PIL import Image

    msgs = [{"role": "user", "content": ("<image>" if image else "") + "What colour?"},
            {"role": "assistant", "content": answer}]
    if not image:
        return Conversation(msgs)
    name = f"{size[0]}x{size[1]}.png"
    Image.new("RGB", size, colour).save(folder / name)
    return Conversation(msgs, images=[resolve_image(name, "test", 0, folder)])


def model_inputs(proc, template, convs: list[Conversation]) -> dict:
    from tunelab.data.vision import collate_vision, tokenize_vision

    batch = collate_vision([tokenize_vision(proc, template, c, 512) for c in convs], proc.tokenizer.pad_token_id)
    return {k: v for k, v in batch.items() if k != "labels"}


@pytest.mark.parametrize("name", FAMILIES)
def test_a_batch_of_images_of_different_sizes_gives_each_samples_own_logits(name, tmp_path):
    from tunelab.models import load_model
    from tunelab.models.tiny_vlm import tiny_vlm_dir
    from tunelab.models.vision import load_processor

    proc = load_processor(tiny_vlm_dir(name))
    model = load_model(name).eval()
    # 60x60 -> 56x56 px: 4x4 patches, 4 tokens; 100x50 -> 112x56 px: 8x4 patches, 8 tokens; one text-only sample
    convs = [conversation(tmp_path, (60, 60), (200, 0, 0)), conversation(tmp_path, (100, 50), (0, 0, 200), "blue"),
             conversation(tmp_path, None, None, "none", image=False)]
    batch = model_inputs(proc, proc.chat_template, convs)
    assert batch["image_grid_thw"].tolist() == [[1, 4, 4], [1, 4, 8]]  # in sample order
    assert batch["pixel_values"].shape[0] == 16 + 32  # the patches of both images, concatenated
    image_id = proc.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert batch["mm_token_type_ids"].sum(1).tolist() == [4, 8, 0]
    assert torch.equal(batch["mm_token_type_ids"].bool(), batch["input_ids"] == image_id)
    with torch.no_grad():
        together = model(**batch).logits  # (3, T, V)
        for i, c in enumerate(convs):
            alone = model_inputs(proc, proc.chat_template, [c])
            n = alone["input_ids"].shape[1]
            torch.testing.assert_close(together[i, :n], model(**alone).logits[0], atol=1e-5, rtol=1e-4)
        # the marks matter: without them image tokens get text positions (1-D) and the answer changes
        flat = dict(batch, mm_token_type_ids=torch.zeros_like(batch["mm_token_type_ids"]))
        assert not torch.allclose(model(**flat).logits[:2], together[:2], atol=1e-4)


@pytest.fixture(scope="module", params=FAMILIES)
def qwen(request, shapes, tmp_path_factory):
    """(name, base folder, a LoRA run with the merger trained too, 6 steps)."""
    from tunelab.api import train
    from tunelab.models.tiny_vlm import tiny_vlm_dir

    name = request.param
    run = train({"model": {"name": name}, "data": {"train": str(shapes), "max_length": 96, "val_size": 0.2},
                 "method": {"name": "lora", "r": 4, "dropout": 0.0, "train_projector": True},
                 "train": {"max_steps": 6, "batch_size": 4, "lr": 5e-3, "report": False},
                 "output_dir": str(tmp_path_factory.mktemp("runs") / name)}, progress=False)
    return name, tiny_vlm_dir(name), run


def shape_inputs(proc, template, shapes, i=1) -> dict:
    from tunelab.data.formats import parse_records
    from tunelab.data.io import read_records

    convs, _ = parse_records(read_records(shapes))
    return model_inputs(proc, template, [convs[i]])


def test_training_changes_language_adapters_and_the_merger_only(qwen):
    from safetensors.torch import load_file

    _, base_dir, run = qwen
    losses = [m["loss"] for m in run.metrics() if "loss" in m]
    assert losses[-1] < losses[0]
    cfg = json.loads((run.path / "adapter" / "adapter_config.json").read_text())
    assert cfg["target_modules"] and all(t.startswith("model.language_model.") for t in cfg["target_modules"])
    assert cfg["modules_to_save"] == ["model.visual.merger"]
    saved = load_file(str(run.path / "adapter" / "adapter_model.safetensors"))
    visual = [k for k in saved if ".visual." in k]
    assert visual and all(".visual.merger." in k for k in visual)  # the vision blocks stayed frozen, unsaved
    base = load_file(str(base_dir / "model.safetensors"))
    merger = {k.split("visual.merger.")[1].replace("modules_to_save.default.", ""): v for k, v in saved.items()
              if "visual.merger." in k}
    assert any(not torch.equal(v, base[f"visual.merger.{k}"]) for k, v in merger.items())  # the hub layout


def test_reload_gives_the_logits_of_an_independent_peft_load(qwen, shapes):
    _, base_dir, run = qwen
    r = reload_against_peft(run, base_dir, lambda proc, template: shape_inputs(proc, template, shapes))
    model, proc, template, got, want, plain = r.model, r.proc, r.template, r.got, r.want, r.plain
    with torch.no_grad():
        other = model(**shape_inputs(proc, template, shapes, i=0)).logits  # a red image instead of a green one
    assert torch.equal(got, want)
    assert not torch.allclose(got, plain, atol=1e-4)  # training changed the answer to an image prompt
    assert other.shape == got.shape  # both images are 6 tokens and the text is the same...
    assert not torch.allclose(other[0, -1], got[0, -1], atol=1e-4)  # ...so only the image changed the answer


def test_merged_equals_unmerged_and_the_export_loads_in_transformers(qwen, shapes, tmp_path):
    from transformers import (
        AutoImageProcessor,
        AutoModelForImageTextToText,
        AutoTokenizer,
    )

    from tunelab.models.vision import load_processor

    name, _, run = qwen
    model, _, template = run.load_model(device="cpu")
    merged, _, _ = run.load_model(device="cpu", merged=True)
    inputs = shape_inputs(run.load_processor(), template, shapes)
    out = run.export("merged", tmp_path / "merged")
    exported = AutoModelForImageTextToText.from_pretrained(str(out)).eval()
    saved = json.loads((out / "processor_config.json").read_text())
    # a standard folder for transformers' own processor class, with the video settings it builds one from
    assert saved["processor_class"] == ("Qwen2VLProcessor" if name == "tiny-qwen2-vl" else "Qwen2_5_VLProcessor")
    assert saved["video_processor"]["patch_size"] == 14
    if has_torchvision():
        from transformers import AutoProcessor

        proc = AutoProcessor.from_pretrained(str(out))
    else:  # transformers cannot build any Qwen2-VL processor without torchvision; its parts load as they are
        proc = load_processor(out)
        assert type(AutoImageProcessor.from_pretrained(str(out))) is type(proc.image_processor)
        assert AutoTokenizer.from_pretrained(str(out)).get_vocab() == proc.tokenizer.get_vocab()
    with torch.no_grad():
        a, b = model(**inputs).logits, merged(**inputs).logits
        c = exported(**shape_inputs(proc, proc.chat_template, shapes)).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b, c, atol=1e-5, rtol=1e-5)
    assert proc.chat_template == template


def test_chat_with_an_image_equals_a_direct_generate(qwen, shapes):
    from PIL import Image

    _, _, run = qwen
    model, _, template = run.load_model(device="cpu")
    proc = run.load_processor()
    stop = proc.tokenizer.convert_tokens_to_ids("<|im_end|>")

    def direct(image) -> str:  # transformers' processor and generate, greedy, cut at the end-of-turn token
        text = proc.apply_chat_template([{"role": "user", "content": [{"type": "image"},
                                                                      {"type": "text", "text": "What colour?"}]}],
                                        chat_template=template, tokenize=False, add_generation_prompt=True)
        inputs = proc(text=[text], images=[[Image.open(image).convert("RGB")]], return_tensors="pt")
        with torch.no_grad():
            row = model.generate(**inputs, max_new_tokens=6, do_sample=False, eos_token_id=[stop])
        row = row[0, inputs["input_ids"].shape[1]:].tolist()
        return proc.tokenizer.decode(row[:row.index(stop)] if stop in row else row, skip_special_tokens=True).strip()

    red, green = shapes.parent / "img" / "0.png", shapes.parent / "img" / "1.png"
    answer = run.chat("What colour?", images=[str(red)], max_new_tokens=6, repetition_penalty=1.0)
    assert answer and answer == direct(red)
    assert direct(green) != answer  # the image steers generation, not only the first forward pass


def test_serve_answers_a_base64_image_like_chat(qwen, shapes):
    import base64

    import openai

    from tests.infer.helpers import ServerThread
    from tunelab.cli.serve import spec_from_run
    from tunelab.infer.server import ServeLimits, create_app

    _, _, run = qwen
    image = shapes.parent / "img" / "0.png"
    url = "data:image/png;base64," + base64.b64encode(image.read_bytes()).decode()
    expected = run.chat("What colour?", images=[str(image)], max_new_tokens=6, repetition_penalty=1.0)
    with ServerThread(create_app([spec_from_run(run.path)], limits=ServeLimits(max_tokens=8))) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        resp = client.chat.completions.create(model=run.path.name, max_tokens=6, temperature=0, messages=[
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": "What colour?"}]}])
    assert expected and resp.choices[0].message.content == expected


def test_eval_loss_over_batches_of_mixed_image_sizes_equals_sample_by_sample(qwen, tmp_path):
    from PIL import Image
    from typer.testing import CliRunner

    from tunelab.cli import app
    from tunelab.data.pipeline import load_conversations
    from tunelab.data.vision import tokenize_vision

    _, _, run = qwen
    rows = []
    for i, size in enumerate([(60, 60), (100, 50), (25, 20), (84, 112)]):  # 4, 8, 6 and 12 image tokens
        Image.new("RGB", size, (40 * i, 200 - 40 * i, 90)).save(tmp_path / f"{i}.png")
        rows.append({"messages": [{"role": "user", "content": "<image>What colour?"},
                                  {"role": "assistant", "content": ["red", "green", "blue", "red"][i]}],
                     "images": [f"{i}.png"]})
    data = tmp_path / "mixed.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    res = CliRunner().invoke(app, ["eval", str(run.path), "--data", str(data), "--max-new-tokens", "2"])
    assert res.exit_code == 0, res.output
    metrics = json.loads(max((run.path / "eval").glob("mixed-*.json")).read_text())["metrics"]
    model, _, template = run.load_model(device="cpu")
    proc = run.load_processor()
    total = count = 0
    with torch.no_grad():
        for c in load_conversations(str(data), "auto")[0]:  # one at a time, straight from the processor's tensors
            s = tokenize_vision(proc, template, c, 1024)
            logits = model(input_ids=torch.tensor([s.input_ids]),
                           mm_token_type_ids=torch.tensor([s.per_token["mm_token_type_ids"]]), **s.pixels).logits
            labels = torch.tensor(s.labels[1:])
            keep = labels != -100
            total += float(torch.nn.functional.cross_entropy(logits[0, :-1][keep], labels[keep], reduction="sum"))
            count += int(keep.sum())
    assert metrics["n"] == 4 and metrics["loss"] == pytest.approx(total / count, rel=1e-4)


def quiet_load(folder):
    """load_processor(folder), asserting that transformers logged no warning and Python raised none."""
    from tunelab.models.vision import load_processor

    logged: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = logged.append
    logging.getLogger("transformers").addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            proc = load_processor(folder)
    finally:
        logging.getLogger("transformers").removeHandler(handler)
    assert [r.getMessage() for r in logged] == [] and [str(w.message) for w in caught] == []
    return proc


def test_a_hub_layout_folder_loads_without_a_video_processor_or_warnings(tmp_path):
    """The hub's Qwen2-VL folders keep the image settings in preprocessor_config.json and the template in
    chat_template.json; without torchvision they load image-only, quietly, and process like the original."""
    from tunelab.models.tiny_vlm import tiny_vlm_dir

    src = tiny_vlm_dir("tiny-qwen2-vl")
    hub = tmp_path / "hub"
    shutil.copytree(src, hub)
    nested = json.loads((hub / "processor_config.json").read_text())
    legacy = dict(nested["image_processor"], processor_class="Qwen2VLProcessor", min_pixels=56 * 56,
                  max_pixels=112 * 112)
    legacy.pop("size")
    (hub / "preprocessor_config.json").write_text(json.dumps(legacy))
    (hub / "chat_template.json").write_text(json.dumps({"chat_template": (hub / "chat_template.jinja").read_text()}))
    (hub / "processor_config.json").unlink()
    (hub / "chat_template.jinja").unlink()
    proc, base = quiet_load(hub), quiet_load(src)
    assert type(proc).__name__ == "Qwen2VLProcessor"
    assert has_torchvision() or not hasattr(proc, "video_processor")
    again = pickle.loads(pickle.dumps(proc))  # as multiprocessing would send it
    assert type(again) is type(proc) and again.image_processor.to_dict() == proc.image_processor.to_dict()
    conv = conversation(tmp_path, (100, 50), (0, 200, 0), "green")
    a, b = model_inputs(proc, proc.chat_template, [conv]), model_inputs(base, base.chat_template, [conv])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_image_only_processor_is_not_used_where_it_is_not_needed(tmp_path):
    from tunelab.models.image_only import needs_image_only
    from tunelab.models.tiny_vlm import tiny_vlm_dir

    assert needs_image_only(tiny_vlm_dir("tiny-llava")) is None  # LLaVA's processor has no video processor
    if has_torchvision():
        assert needs_image_only(tiny_vlm_dir("tiny-qwen2-vl")) is None
    else:
        assert needs_image_only(tiny_vlm_dir("tiny-qwen2.5-vl")).__name__ == "Qwen2_5_VLProcessor"
