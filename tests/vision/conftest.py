"""Fixtures for the vision tests: a small image+text dataset written to a temp folder, and tiny VLMs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 70, 220)}


def write_shapes(folder: Path, n: int = 12) -> Path:
    """n records (coloured squares, 'What colour?' -> colour) in both layouts; images relative to the file."""
    from PIL import Image

    (folder / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        name = list(COLOURS)[i % len(COLOURS)]
        Image.new("RGB", (24 + i, 20), COLOURS[name]).save(folder / "img" / f"{i}.png")
        if i % 2:
            rows.append({"messages": [{"role": "user", "content": "<image>What colour?"},
                                      {"role": "assistant", "content": name}], "images": [f"img/{i}.png"]})
        else:
            rows.append({"messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": f"img/{i}.png"}},
                                             {"type": "text", "text": "What colour?"}]},
                {"role": "assistant", "content": name}]})
    path = folder / "shapes.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="package")
def shapes(tmp_path_factory) -> Path:
    return write_shapes(tmp_path_factory.mktemp("shapes"))


@pytest.fixture(scope="package")
def llava_dir() -> Path:
    from tunelab.models.tiny_vlm import tiny_vlm_dir

    return tiny_vlm_dir("tiny-llava")


@pytest.fixture(scope="package")
def llava_run(shapes, tmp_path_factory):
    """A LoRA run on tiny-llava (projector trained too), 6 steps."""
    from tunelab.api import train

    out = tmp_path_factory.mktemp("runs") / "vision-lora"
    return train({"model": {"name": "tiny-llava"}, "data": {"train": str(shapes), "max_length": 96, "val_size": 0.2},
                  "method": {"name": "lora", "r": 4, "dropout": 0.0, "train_projector": True},
                  "train": {"max_steps": 6, "batch_size": 4, "lr": 5e-3, "report": False},
                  "output_dir": str(out)}, progress=False)


def reload_against_peft(run, base_dir: Path, make_inputs):
    """A vision LoRA run reloaded by tunelab beside an independent PEFT load of its adapter and the plain base:
    (model, processor, template, inputs, logits of each). `make_inputs(processor, template)` builds the batch."""
    from types import SimpleNamespace

    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    model, _, template = run.load_model(device="cpu")
    proc = run.load_processor()
    inputs = make_inputs(proc, template)
    ref = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(str(base_dir)),
                                    str(run.path / "adapter")).eval()
    base = AutoModelForImageTextToText.from_pretrained(str(base_dir)).eval()
    with torch.no_grad():
        got, want, plain = model(**inputs).logits, ref(**inputs).logits, base(**inputs).logits
    return SimpleNamespace(model=model, proc=proc, template=template, inputs=inputs, got=got, want=want, plain=plain)
