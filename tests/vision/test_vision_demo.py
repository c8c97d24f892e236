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
        assert score_answer("colour", f"It is {item.colour}.", item) == 1.0
        assert score_answer("shape", "circle or square", item) == 0.0  # naming two shapes is not an answer
        assert score_answer("count", f"There are {item.count}.", item) == 1.0
        assert score_answer("count", "1 or 2 or 3", item) == 0.0
        assert score_answer("box", "no box", item) == 0.0


def test_a_correct_box_answer_scores_as_correct():
    """The reference answer is written on the coarse grid; read back in the image's scale it must still
    count as a hit (IoU >= 0.5) for every image the generator draws, and the IoU is the eval metric's."""
    import random

    from tunelab.demo.shapes import GRID, draw_shape
    from tunelab.eval.metrics import box_iou

    rng = random.Random(0)
    counts = set()
    for _ in range(500):
        _, colour, shape, count, box = draw_shape(rng)
        item = ShapeImage("x.png", colour, shape, count, box)
        counts.add(count)
        written = format_box(box)
        assert all(0 <= int(v) <= GRID for v in written.strip("[]").split(", "))
        assert score_answer("box", written, item) >= 0.6
    assert counts == {1, 2, 3}
    # a grid box is read in the image's scale: [0, 0, 9, 9] is the whole image, IoU = the box's area share
    item = ShapeImage("x.png", "red", "square", 1, (0, 0, 50, 50))
    assert score_answer("box", "[0, 0, 9, 9]", item) == pytest.approx(0.25)
    assert score_answer("box", "[0, 0, 4.5, 4.5]", item) == pytest.approx(
        box_iou(["[0, 0, 50, 50]"], ["[0, 0, 50, 50]"])["box_iou"] / 100)


def test_image_tokens_are_aligned_to_the_answers_as_tokenized():
    """Each image token's alignment target is a token of the answers, in fixed slots: colour, shape
    (padded to the longest shape name), count, then the grid box exactly as the answer writes it."""
    from tunelab.demo.vision import align_loss, caption_ids, read_back
    from tunelab.models.tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    items = [ShapeImage("a.png", "purple", "triangle", 3, (10, 2, 96, 88)),
             ShapeImage("b.png", "red", "square", 1, (0, 0, 50, 50))]
    ids = caption_ids(items, tok, 16)
    assert ids.shape == (2, 16)
    assert tok.decode(ids[0]) == "purpletriangle3[1, 0, 9, 8]" == "".join(it.answer(k) for it in items[:1]
                                                                       for k in ("colour", "shape", "count", "box"))
    assert tok.decode(ids[1]) == "redsquare 1[0, 0, 4, 4]"  # one-token shape padded with a space
    assert caption_ids(items, tok, 20)[:, 16:].eq(-1).all() and caption_ids(items, tok, 8).shape == (2, 8)

    emb = torch.randn(tok.vocab_size + 8, 32)
    exact = emb[ids]  # (2, 16, 32): tokens that are their targets' embeddings
    assert align_loss(exact, ids, emb).item() == 0.0 and read_back(exact, ids, emb) == 1.0
    moved = exact.clone()
    moved[1, 5] = emb[ids[1, 6]]  # one token of the second image lands on another word
    assert read_back(moved, ids, emb) == 0.5 and align_loss(moved, ids, emb).item() > 0


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
    assert set(result["after"]) == {"colour", "shape", "count", "box_iou@0.5", "box_iou"}
    assert set(result["see"]["heldout"]) == {"colour", "shape", "count", "box_iou@0.5", "read_back"}
