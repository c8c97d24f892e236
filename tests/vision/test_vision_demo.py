"""`tunelab demo --vision` end to end on a reduced size: generated images, a composed LLaVA, a run that learns
and reloads. A tiny Llama stands in for SmolLM2 so the test takes seconds; the pipeline is the demo's own."""

from __future__ import annotations

import json

import pytest
import torch

from tunelab.demo.shapes import (
    QUESTIONS,
    ShapeImage,
    format_box,
    score_answer,
    write_dataset,
)
from tunelab.models.compose import VisionSpec


@pytest.fixture(scope="module")
def tiny_lm_dir(tmp_path_factory):
    """tiny-llama (2 layers, SmolLM2's tokenizer) saved as an HF folder, the shape compose_llava reads."""
    from tunelab.models.tiny import build_tiny_model, tiny_tokenizer

    folder = tmp_path_factory.mktemp("tiny-lm")
    build_tiny_model("tiny-llama").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def test_generated_records_match_their_images(tmp_path):
    paths = write_dataset(tmp_path, n_train=6, n_test=3, seed=5)
    again = write_dataset(tmp_path / "again", n_train=6, n_test=3, seed=5)
    assert paths["train"].read_text() == again["train"].read_text()  # seeded: same records
    truth = [ShapeImage(**{**t, "box": tuple(t["box"])}) for t in json.loads(paths["truth"].read_text())]
    held = [json.loads(line) for line in paths["heldout"].read_text().splitlines()]
    assert len(held) == 3 * len(QUESTIONS)
    from PIL import Image

    for item in truth:  # the box holds the shape's pixels: its colour is inside, the background just outside
        img = Image.open(tmp_path / item.file).convert("RGB")
        x1, y1, x2, y2 = (round(v * img.width / 100) for v in item.box)
        inside = [img.getpixel((x, y)) for x in range(x1, x2) for y in range(y1, y2)]
        from tunelab.demo.shapes import COLOURS

        assert COLOURS[item.colour] in inside
        assert item.box[2] - item.box[0] > 20 and item.box[3] - item.box[1] > 20
        assert score_answer("box", format_box(item.box), item) == pytest.approx(1.0)
        assert score_answer("colour", f"It is {item.colour}.", item) == 1.0
        assert score_answer("shape", "circle or square", item) == 0.0  # naming two shapes is not an answer


def test_vision_demo_learns_and_the_run_reloads(tmp_path, tiny_lm_dir):
    from tunelab.demo.vision import VisionDemoSize, ask_heldout, run_vision_demo
    from tunelab.run import Run
    from tunelab.runfolder import RunFolder

    size = VisionDemoSize(train_images=16, heldout_images=2, see_images=16, see_steps=3, epochs=3, batch_size=4,
                          lr=3e-3, vision=VisionSpec(image_size=32, patch_size=8, hidden=32, layers=1, heads=2, mlp=64))
    result = run_vision_demo(tmp_path / "demo", size, seed=1, progress=False, language_model=tiny_lm_dir)

    losses = [m["loss"] for m in RunFolder(result["run"]).read_metrics() if "loss" in m]
    assert len(losses) == 12  # 16 records / batch 4 x 3 epochs
    # a random 2-layer model starts at ln(49k) = 10.8; three epochs of LoRA + projector move it down steadily
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.1, losses

    run = Run(result["run"])
    assert run.is_vision
    model, _, template = run.load_model(device="cpu")
    trainable = run.config.method
    assert trainable.train_projector and trainable.train_vision
    # the projector trained in full: it differs from the composed model's
    from tunelab.models.vision import load_vision_model

    composed = load_vision_model(tmp_path / "demo" / "model", torch.float32)
    trained = [p for n, p in model.named_parameters()  # PEFT keeps the trained copy beside the original
               if "multi_modal_projector" in n and n.endswith("linear_1.weight") and "original_module" not in n]
    assert len(trained) == 1
    assert not torch.equal(trained[0], composed.model.multi_modal_projector.linear_1.weight)
    truth = [ShapeImage(**{**t, "box": tuple(t["box"])})
             for t in json.loads((tmp_path / "demo" / "data" / "heldout_truth.json").read_text())]
    again = ask_heldout(model, run.load_processor(), template, truth, tmp_path / "demo" / "data")
    saved = json.loads((tmp_path / "demo" / "demo_result.json").read_text())
    assert {k: v["answers"] for k, v in again.items()} == saved["answers"]["after"]  # reloaded == as trained
    assert set(result["after"]) == {"colour", "shape", "box_iou@0.5", "box_iou"}
