"""tunelab eval / generate on a vision run: answers to image questions scored (exact, contains, box IoU), loss
equal to a direct computation, predictions equal to chatting with the same image."""

from __future__ import annotations

import json

import pytest
import torch

from tunelab.eval.metrics import box_iou, parse_box


@pytest.mark.parametrize("text, box", [
    ("the dog is at [10, 20, 30, 40].", (10, 20, 30, 40)),
    ("<|box_start|>(30,40),(10,20)<|box_end|>", (10, 20, 30, 40)),
    ("[0.1, 0.2, 0.5, 0.6]", (0.1, 0.2, 0.5, 0.6)),
    ("no box here", None),
])
def test_parse_box(text, box):
    assert parse_box(text) == (pytest.approx(box) if box else None)


def test_box_iou_against_hand_computed_values():
    # [0,0,10,10] vs [5,0,15,10]: intersection 50, union 150 -> 1/3; exact box -> 1; no box -> 0
    out = box_iou(["[0,0,10,10]", "[1,1,4,4]", "I don't know", "red"], ["[5,0,15,10]", "[1,1,4,4]", "[0,0,2,2]", "red"])
    assert out["boxes"] == 3
    assert out["box_iou"] == pytest.approx((1 / 3 + 1 + 0) / 3)
    assert out["box_iou@0.5"] == pytest.approx(1 / 3)


def test_eval_scores_answers_and_loss_like_a_direct_computation(llava_run, shapes, tmp_path):
    from typer.testing import CliRunner

    from tunelab.cli import app
    from tunelab.data.formats import parse_records
    from tunelab.data.io import read_records
    from tunelab.data.vision import tokenize_vision

    rows = [json.loads(x) for x in shapes.read_text().splitlines()][:3]
    rows[2]["messages"][-1]["content"] = "[2, 2, 20, 18]"  # a grounding answer: box IoU is added
    data = shapes.parent / "vqa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    res = CliRunner().invoke(app, ["eval", str(llava_run.path), "--data", str(data), "--max-new-tokens", "4"])
    assert res.exit_code == 0, res.output
    saved = sorted((llava_run.path / "eval").glob("vqa-*.json"))[-1]
    metrics = json.loads(saved.read_text())["metrics"]
    assert {"exact_match", "contains", "box_iou", "box_iou@0.5", "loss"} <= set(metrics) and metrics["n"] == 3
    assert metrics["boxes"] == 1
    # the loss, computed here sample by sample straight from the model
    model, _, template = llava_run.load_model(device="cpu")
    proc = llava_run.load_processor()
    convs, _ = parse_records(read_records(data))
    total = count = 0
    with torch.no_grad():
        for c in convs:
            s = tokenize_vision(proc, template, c, 1024)
            logits = model(input_ids=torch.tensor([s.input_ids]), **s.pixels).logits[0, :-1]
            labels = torch.tensor(s.labels[1:])
            keep = labels != -100
            total += float(torch.nn.functional.cross_entropy(logits[keep], labels[keep], reduction="sum"))
            count += int(keep.sum())
    assert metrics["loss"] == pytest.approx(total / count, rel=1e-4)
    preds = [json.loads(x) for x in saved.with_name(saved.stem + ".predictions.jsonl").read_text().splitlines()]
    assert preds[0]["images"] and preds[2]["reference"] == "[2, 2, 20, 18]"


def test_generate_answers_each_record_with_its_image(llava_run, shapes, tmp_path):
    from typer.testing import CliRunner

    from tunelab.cli import app

    out = tmp_path / "preds.jsonl"
    res = CliRunner().invoke(app, ["generate", str(llava_run.path), "--data", str(shapes), "--out", str(out),
                                   "--limit", "2", "--max-new-tokens", "4"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 2
    expected = llava_run.chat("What colour?", images=[str(shapes.parent / "img" / "1.png")], max_new_tokens=4,
                              repetition_penalty=1.0)
    assert rows[1]["prediction"] == expected and rows[1]["images"] == ["img/1.png"]
