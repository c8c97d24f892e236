"""Generated images for the vision demo: one to three shapes of one kind and colour on a plain background.

Each image has a known colour, shape, count and bounding box (the box around all its shapes), so a
model's answers can be scored exactly: colour and shape by the named word, the count by the number,
position by the IoU of the box it writes. Boxes are written as text, `[x1, y1, x2, y2]` on a grid of
GRID + 1 steps across the image (0 is the left/top edge, GRID the right/bottom edge), the way grounding
datasets write quantised boxes (Qwen-VL uses 0..1000). A coarse grid keeps every coordinate one digit,
one token for the language model; IoU is computed after mapping the grid back to the image's scale.

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

from tunelab.eval.metrics import box_iou, parse_box

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 170, 50), "blue": (40, 70, 230),
    "yellow": (240, 210, 20), "purple": (150, 50, 190), "orange": (250, 130, 10),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
IMAGE_SIZE = 64
SIDES: dict[int, tuple[int, int]] = {1: (30, 34), 2: (22, 26), 3: (18, 22)}
"""The shapes' side in pixels by how many are drawn: one fills about half the image, three still fit."""
GRID = 9
"""Box coordinates are written as 0..GRID: one digit each (a step of 1/9 of the image, about 7 px)."""

QUESTIONS: dict[str, tuple[str, ...]] = {
    "colour": ("What colour are the shapes?", "Which colour is used in the picture?"),
    "shape": ("What shape is in the image?", "Which shape is shown?"),
    "count": ("How many shapes are there?", "Count the shapes."),
    "box": ("Give the bounding box of the shapes.", "Where are the shapes? Answer with one box around them."),
}
"""Question phrasings per kind; each record asks every kind about its image, one per turn."""

@dataclass(frozen=True)
class ShapeImage:
    """What one generated image shows: the file, its colour and shape names, how many shapes, and the box
    around them all in hundredths of the image (0..100, the image's own scale; answers use the grid)."""

    file: str
    colour: str
    shape: str
    count: int
    box: tuple[int, int, int, int]

    def answer(self, kind: str) -> str:
        """The reference answer to a question of this kind ("colour", "shape", "count" or "box")."""
        if kind == "box":
            return format_box(self.box)
        return {"colour": self.colour, "shape": self.shape, "count": str(self.count)}[kind]


def format_box(box: tuple[float, float, float, float]) -> str:
    """A box in hundredths of the image written on the answer grid, as grounding data writes it: `[x1, y1, x2, y2]`."""
    return "[" + ", ".join(str(round(v * GRID / 100)) for v in box) + "]"


def grid_to_hundredths(box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    """A box read from an answer (grid units) back in hundredths of the image, the scale IoU is computed in."""
    return tuple(v * 100 / GRID for v in box)  # type: ignore[return-value]


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


def _place(rng: random.Random, count: int, side: float, size: int) -> list[tuple[float, float]]:
    """Top-left corners of `count` squares of `side` px inside the image, at least 2 px apart."""
    for _ in range(1000):
        spots = [(rng.uniform(0, size - side), rng.uniform(0, size - side)) for _ in range(count)]
        if all(abs(a[0] - b[0]) > side + 2 or abs(a[1] - b[1]) > side + 2
               for i, a in enumerate(spots) for b in spots[i + 1:]):
            return spots
    raise RuntimeError(f"cannot place {count} shapes of {side:.0f} px in {size} px")  # the SIDES table is wrong


def draw_shape(rng: random.Random,
               size: int = IMAGE_SIZE) -> tuple[Image.Image, str, str, int, tuple[int, int, int, int]]:
    """One image: one to three shapes of one random kind, colour and size, at random places on a plain
    grey-ish background. Returns the image, colour, shape, count and the box around all shapes (0..100)."""
    colour = rng.choice(list(COLOURS))
    shape = rng.choice(SHAPES)
    count = rng.randint(1, 3)
    grey = rng.choice((rng.randint(200, 250), rng.randint(40, 90)))  # light or dark, never near a shape colour
    background = tuple(max(0, min(255, grey + rng.randint(-12, 12))) for _ in range(3))
    img = Image.new("RGB", (size, size), background)
    scale = size / IMAGE_SIZE
    side = rng.uniform(*SIDES[count]) * scale
    draw = ImageDraw.Draw(img)
    xs: list[float] = []
    ys: list[float] = []
    for x, y in _place(rng, count, side, size):
        pts = _polygon(shape, x, y, side)
        if pts is None:
            draw.ellipse((x, y, x + side, y + side), fill=COLOURS[colour])
            pts = [(x, y), (x + side, y + side)]
        else:
            draw.polygon(pts, fill=COLOURS[colour])  # the star's points do not reach every side of its square
        xs += [p[0] for p in pts]
        ys += [p[1] for p in pts]
    box = tuple(round(100 * v / size) for v in (min(xs), min(ys), max(xs), max(ys)))
    return img, colour, shape, count, box  # type: ignore[return-value]


def make_images(folder: str | Path, n: int, seed: int, prefix: str) -> list[ShapeImage]:
    """Draw n images into folder as `<prefix>_<i>.png` and return what each shows (file names relative)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    out = []
    for i in range(n):
        img, colour, shape, count, box = draw_shape(rng)
        name = f"{prefix}_{i:04d}.png"
        img.save(folder / name)
        out.append(ShapeImage(f"{folder.name}/{name}", colour, shape, count, box))
    return out


def training_record(item: ShapeImage, rng: random.Random) -> dict:
    """One ShareGPT/messages record with an `images` list: every question about an image, one per turn.

    Asking them all in one conversation lets one pass over the image train every answer.
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
    """1.0 when a colour/shape/count answer names the right word and no other; the box's IoU for a box answer.

    A box answer is read on the grid and mapped back to hundredths of the image, and its IoU with the
    drawn box is the same one `tunelab eval` reports (`box_iou`), computed in the image's own scale.
    """
    text = answer.lower()
    if kind == "box":
        said = parse_box(answer)
        if said is None:
            return 0.0
        pred = "[" + ", ".join(f"{v:.4f}" for v in grid_to_hundredths(said)) + "]"
        return box_iou([pred], ["[" + ", ".join(map(str, item.box)) + "]"])["box_iou"] / 100  # percent -> 0..1
    if kind == "count":
        said = re.findall(r"\b\d+\b", text)
        return float(said == [str(item.count)])
    names = list(COLOURS) if kind == "colour" else list(SHAPES)
    said = [n for n in names if re.search(rf"\b{n}\b", text)]
    return float(said == [getattr(item, kind)])
