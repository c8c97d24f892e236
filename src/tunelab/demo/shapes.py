"""Generated images for the vision demo: one coloured shape on a plain background, with its answers.

Each image has a known colour, shape and bounding box, so a model's answers can be scored exactly:
colour and shape by the named word, position by the IoU of the box it writes. Boxes are written as
text, `[x1, y1, x2, y2]` in hundredths of the image's width and height (0..100), the way grounding
datasets write them, so a language model reads and writes them as ordinary tokens.

Everything is drawn with PIL from a seeded random generator: the same seed gives the same images.
"""

from __future__ import annotations

import json
import math
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from tunelab.eval.metrics import box_iou

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 170, 50), "blue": (40, 70, 230),
    "yellow": (240, 210, 20), "purple": (150, 50, 190), "orange": (250, 130, 10),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
IMAGE_SIZE = 64
MIN_SIDE, MAX_SIDE = 30, 34  # the shape's side in pixels: about half the image

QUESTIONS: dict[str, tuple[str, ...]] = {
    "colour": ("What colour is the shape?", "Which colour is the shape in the picture?"),
    "shape": ("What shape is in the image?", "Which shape is shown?"),
    "box": ("Give the bounding box of the shape.", "Where is the shape? Answer with its box."),
}
"""Question phrasings per kind; each record asks all three kinds about its image, one per turn."""

@dataclass(frozen=True)
class ShapeImage:
    """What one generated image shows: the file, its colour and shape names, and its box (0..100)."""

    file: str
    colour: str
    shape: str
    box: tuple[int, int, int, int]

    def answer(self, kind: str) -> str:
        """The reference answer to a question of this kind ("colour", "shape" or "box")."""
        if kind == "box":
            return format_box(self.box)
        return {"colour": self.colour, "shape": self.shape}[kind]


def format_box(box: tuple[int, int, int, int]) -> str:
    """A box as grounding datasets write it: `[x1, y1, x2, y2]`."""
    return "[" + ", ".join(str(v) for v in box) + "]"


def _polygon(shape: str, x: float, y: float, side: float) -> list[tuple[float, float]] | None:
    """Vertices of a shape filling the square (x, y, side); None for the circle (drawn as an ellipse)."""
    if shape == "square":
        return [(x, y), (x + side, y), (x + side, y + side), (x, y + side)]
    if shape == "triangle":
        return [(x + side / 2, y), (x + side, y + side), (x, y + side)]
    if shape == "star":
        cx, cy, r_out = x + side / 2, y + side / 2, side / 2
        pts = []
        for i in range(10):
            r = r_out if i % 2 == 0 else r_out * 0.45
            a = -math.pi / 2 + i * math.pi / 5
            pts.append((cx + r * math.cos(a), cy + r * math.sin(a)))
        return pts
    return None


def draw_shape(rng: random.Random, size: int = IMAGE_SIZE) -> tuple[Image.Image, str, str, tuple[int, int, int, int]]:
    """One image: a random shape of a random colour, size and place on a plain grey-ish background."""
    colour = rng.choice(list(COLOURS))
    shape = rng.choice(SHAPES)
    grey = rng.choice((rng.randint(200, 250), rng.randint(40, 90)))  # light or dark, never near a shape colour
    background = tuple(max(0, min(255, grey + rng.randint(-12, 12))) for _ in range(3))
    img = Image.new("RGB", (size, size), background)
    scale = size / IMAGE_SIZE
    side = rng.uniform(MIN_SIDE, MAX_SIDE) * scale
    x, y = rng.uniform(0, size - side), rng.uniform(0, size - side)
    draw = ImageDraw.Draw(img)
    pts = _polygon(shape, x, y, side)
    if pts is None:
        draw.ellipse((x, y, x + side, y + side), fill=COLOURS[colour])
    else:
        draw.polygon(pts, fill=COLOURS[colour])
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        x, y = min(xs), min(ys)  # the star's points do not reach every side of its square
        side_x, side_y = max(xs) - x, max(ys) - y
    if pts is None:
        side_x = side_y = side
    box = (round(100 * x / size), round(100 * y / size), round(100 * (x + side_x) / size), round(100 * (y + side_y) / size))
    return img, colour, shape, box


def make_images(folder: str | Path, n: int, seed: int, prefix: str) -> list[ShapeImage]:
    """Draw n images into folder as `<prefix>_<i>.png` and return what each shows (file names relative)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    out = []
    for i in range(n):
        img, colour, shape, box = draw_shape(rng)
        name = f"{prefix}_{i:04d}.png"
        img.save(folder / name)
        out.append(ShapeImage(f"{folder.name}/{name}", colour, shape, box))
    return out


def training_record(item: ShapeImage, rng: random.Random) -> dict:
    """One ShareGPT/messages record with an `images` list: the three questions about an image, one per turn.

    Asking all three in one conversation lets one pass over the image train three answers.
    """
    kinds = list(QUESTIONS)
    rng.shuffle(kinds)
    messages = []
    for i, kind in enumerate(kinds):
        question = rng.choice(QUESTIONS[kind])
        messages.append({"role": "user", "content": ("<image>" if i == 0 else "") + question})
        messages.append({"role": "assistant", "content": item.answer(kind)})
    return {"messages": messages, "images": [item.file]}


def question_record(item: ShapeImage, kind: str) -> dict:
    """A single-question record (the first phrasing of its kind) with the reference answer, for evaluation."""
    return {"messages": [{"role": "user", "content": "<image>" + QUESTIONS[kind][0]},
                         {"role": "assistant", "content": item.answer(kind)}],
            "images": [item.file], "kind": kind}


def write_dataset(folder: str | Path, n_train: int = 600, n_test: int = 60, seed: int = 0) -> dict[str, Path]:
    """Write the demo's data: images under `images/` and `heldout/`, `train.jsonl`, `heldout.jsonl`.

    Held-out images come from a different seed than the training images, so no image is in both.
    Returns the paths of the two JSONL files and of `heldout_truth.json` (what each held-out image shows).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    train = make_images(folder / "images", n_train, seed, "train")
    test = make_images(folder / "heldout", n_test, seed + 1_000_003, "test")
    rng = random.Random(seed)
    paths = {"train": folder / "train.jsonl", "heldout": folder / "heldout.jsonl", "truth": folder / "heldout_truth.json"}
    with paths["train"].open("w", encoding="utf-8") as f:
        for item in train:
            f.write(json.dumps(training_record(item, rng)) + "\n")
    with paths["heldout"].open("w", encoding="utf-8") as f:
        for item in test:
            for kind in QUESTIONS:
                f.write(json.dumps(question_record(item, kind)) + "\n")
    paths["truth"].write_text(json.dumps([asdict(t) for t in test]), encoding="utf-8")
    return paths


def score_answer(kind: str, answer: str, item: ShapeImage) -> float:
    """1.0 when a colour/shape answer names the right word and no other; the box's IoU for a box answer."""
    text = answer.lower()
    if kind == "box":  # the same IoU `tunelab eval` reports for grounding answers
        return box_iou([answer], [format_box(item.box)])["box_iou"] / 100  # eval reports percent; here 0..1
    names = list(COLOURS) if kind == "colour" else list(SHAPES)
    said = [n for n in names if re.search(rf"\b{n}\b", text)]
    return float(said == [getattr(item, kind)])
