"""`tunelab demo --vision`: build a small LLaVA from SmolLM2-135M, teach it to read generated shapes, prove it.

Steps, all on CPU and seeded:
1. data: PIL draws coloured shapes (tunelab.demo.shapes); training records ask colour, shape and box
   in one conversation per image; held-out images come from another seed.
2. compose: SmolLM2-135M-Instruct + a SigLIP encoder and projector drawn from scratch, saved as a
   transformers LLaVA folder with its processor (tunelab.models.compose).
3. see: the new encoder is pretrained on the images' own labels with throwaway heads (seconds, no
   language model), the part a pretrained CLIP/SigLIP plays in LLaVA; it stays trainable afterwards.
4. train: `tunelab.train` on the records, the same path `tunelab train` takes: LoRA on the language
   model, the projector and the vision tower trained in full (`train_projector`, `train_vision`).
5. before/after: the composed model and the trained run answer every held-out question; the table
   shows colour and shape accuracy and the share of boxes with IoU >= 0.5.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from tunelab.demo.shapes import (
    COLOURS,
    QUESTIONS,
    SHAPES,
    ShapeImage,
    make_images,
    score_answer,
    write_dataset,
)
from tunelab.models.compose import VisionSpec


@dataclass(frozen=True)
class VisionDemoSize:
    """How much the demo draws and trains; the defaults are the README's run, tests use a smaller one."""

    train_images: int = 640
    heldout_images: int = 30
    see_images: int = 2000
    see_steps: int = 600
    epochs: int = 1
    batch_size: int = 8
    lr: float = 1.0e-3
    vision: VisionSpec = field(default_factory=lambda: VisionSpec(image_size=32, patch_size=8, hidden=128, layers=2,
                                                                  heads=4, mlp=512))


def demo_config(out_dir: Path, model_dir: Path, data_file: Path, size: VisionDemoSize, seed: int) -> dict:
    """The run config: LoRA r8 on the language model, projector and the from-scratch vision tower in full."""
    return {
        "model": {"name": str(model_dir)},
        "data": {"train": str(data_file), "val_size": 0.0, "max_length": 256},
        "method": {"name": "lora", "r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear",
                   "train_projector": True, "train_vision": True},
        "train": {"epochs": size.epochs, "batch_size": size.batch_size, "lr": size.lr, "warmup_ratio": 0.1,
                  "scheduler": "cosine", "seed": seed},
        "output_dir": str(out_dir / "run"),
    }


def see_shapes(model_dir: Path, items: list[ShapeImage], image_root: Path, steps: int, seed: int) -> dict:
    """Pretrain the composed model's vision tower on the images' labels; save it back into model_dir.

    Throwaway heads read the encoder's patch features: a pooled MLP for colour and shape, a linear map of
    all patches for the box. Only the encoder is kept. Returns the last batch's accuracies.
    """
    from PIL import Image

    from tunelab.models.vision import load_processor, load_vision_model

    torch.manual_seed(seed)
    model = load_vision_model(model_dir, torch.float32)
    proc = load_processor(model_dir)
    tower = model.model.vision_tower
    pixels = proc.image_processor([Image.open(image_root / it.file).convert("RGB") for it in items],
                                  return_tensors="pt")["pixel_values"]  # (N, 3, H, W)
    colour = torch.tensor([list(COLOURS).index(it.colour) for it in items])
    shape = torch.tensor([SHAPES.index(it.shape) for it in items])
    box = torch.tensor([it.box for it in items], dtype=torch.float32) / 100
    hidden, n_patch = tower.config.hidden_size, (tower.config.image_size // tower.config.patch_size) ** 2
    pooled = torch.nn.Sequential(torch.nn.Linear(hidden, 256), torch.nn.GELU(), torch.nn.Linear(256, 10))
    boxes = torch.nn.Linear(hidden * n_patch, 4)
    opt = torch.optim.AdamW([*tower.parameters(), *pooled.parameters(), *boxes.parameters()], lr=1e-3)
    F = torch.nn.functional
    gen = torch.Generator().manual_seed(seed)
    tower.train()
    for _ in range(steps):
        idx = torch.randint(0, len(items), (64,), generator=gen)
        feats = tower(pixels[idx]).last_hidden_state  # (64, n_patch, hidden)
        logits = pooled(feats.mean(1))
        pred_box = boxes(feats.flatten(1))
        loss = (F.cross_entropy(logits[:, :6], colour[idx]) + F.cross_entropy(logits[:, 6:], shape[idx])
                + 10 * F.smooth_l1_loss(pred_box, box[idx]))
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(model_dir, safe_serialization=True)
    return {"colour_acc": (logits[:, :6].argmax(1) == colour[idx]).float().mean().item(),
            "shape_acc": (logits[:, 6:].argmax(1) == shape[idx]).float().mean().item(), "loss": loss.item()}


def ask_heldout(model, processor, template: str, truth: list[ShapeImage], image_root: Path,
                max_new_tokens: int = 20) -> dict:
    """Every held-out question answered greedily; per kind the scores and the answers."""
    from PIL import Image

    from tunelab.data.images import IMAGE_TOKEN
    from tunelab.infer.vision import generate_vision

    out: dict = {}
    for kind, phrasings in QUESTIONS.items():
        items = [([{"role": "user", "content": IMAGE_TOKEN + phrasings[0]}],
                  [Image.open(image_root / t.file).convert("RGB")]) for t in truth]
        answers = [a.text for a in generate_vision(model, processor, template, items, max_new_tokens)]
        out[kind] = {"scores": [score_answer(kind, a, t) for a, t in zip(answers, truth)], "answers": answers}
    return out


def summarize(asked: dict) -> dict[str, float]:
    """Colour and shape accuracy, the share of boxes with IoU >= 0.5 and the mean IoU."""
    n = len(asked["colour"]["scores"])
    return {"colour": sum(asked["colour"]["scores"]) / n, "shape": sum(asked["shape"]["scores"]) / n,
            "box_iou@0.5": sum(s >= 0.5 for s in asked["box"]["scores"]) / n,
            "box_iou": sum(asked["box"]["scores"]) / n}


def run_vision_demo(out_dir: str | Path = "runs/demo-vision", size: VisionDemoSize = VisionDemoSize(),
                    seed: int = 0, progress: bool = True, language_model: str | Path | None = None) -> dict:
    """Draw data, compose the VLM, pretrain its eyes, ask, train with tunelab.train, ask again; return scores.

    `language_model`: an HF folder of a causal LM with a ChatML tokenizer (default: the bundled
    SmolLM2-135M-Instruct); tests pass a tiny one.
    """
    import shutil

    import tunelab
    from tunelab.models.compose import compose_llava
    from tunelab.models.loader import gguf_as_hf_dir, smollm2_gguf_path
    from tunelab.models.vision import load_processor, load_vision_model
    from tunelab.utils.io import atomic_write_json

    console = Console()
    out_dir = Path(out_dir)
    for old in ("run", "model"):
        if (out_dir / old).exists():
            shutil.rmtree(out_dir / old)
    t0 = time.time()
    paths = write_dataset(out_dir / "data", size.train_images, size.heldout_images, seed)
    truth = [ShapeImage(**{**t, "box": tuple(t["box"])}) for t in json.loads(paths["truth"].read_text())]
    see_items = make_images(out_dir / "data" / "see", size.see_images, seed + 7, "see")
    console.print(f"[bold]tunelab demo --vision[/]: {size.train_images} training images "
                  f"({paths['train']}), {size.heldout_images} held-out images x {len(QUESTIONS)} questions.")

    lm = Path(language_model) if language_model else gguf_as_hf_dir(smollm2_gguf_path())
    model_dir = compose_llava(lm, out_dir / "model", size.vision, seed)
    lm_name = "SmolLM2-135M-Instruct" if language_model is None else str(language_model)
    console.print(f"composed {model_dir}: {lm_name} + a {size.vision.layers}-layer SigLIP encoder "
                  f"({size.vision.image_tokens} image tokens) and projector from scratch")
    seen = see_shapes(model_dir, see_items, out_dir / "data", size.see_steps, seed)
    t_see = time.time()
    console.print(f"vision encoder pretrained on {size.see_images} labelled images, {size.see_steps} steps "
                  f"(last batch: colour {seen['colour_acc']:.0%}, shape {seen['shape_acc']:.0%})")

    base = load_vision_model(model_dir, torch.float32)
    proc = load_processor(model_dir)
    console.print("asking the composed model (projector untrained)...")
    before = ask_heldout(base, proc, proc.chat_template, truth, out_dir / "data")
    del base
    t_before = time.time()

    cfg = demo_config(out_dir, model_dir, paths["train"], size, seed)
    run = tunelab.train(cfg, progress=progress)
    t_train = time.time()
    tuned, _, template = run.load_model(device="cpu")
    console.print("asking the trained run...")
    after = ask_heldout(tuned, run.load_processor(), template, truth, out_dir / "data")
    t_after = time.time()

    b, a = summarize(before), summarize(after)
    table = Table(title=f"{size.heldout_images} held-out generated images")
    for col in ("question", "chance", "before (composed)", "after (trained run)"):
        table.add_column(col)
    table.add_row("colour: accuracy", f"{1 / len(COLOURS):.0%}", f"{b['colour']:.0%}", f"{a['colour']:.0%}")
    table.add_row("shape: accuracy", f"{1 / len(SHAPES):.0%}", f"{b['shape']:.0%}", f"{a['shape']:.0%}")
    table.add_row("box: IoU >= 0.5", "-", f"{b['box_iou@0.5']:.0%}", f"{a['box_iou@0.5']:.0%}")
    table.add_row("box: mean IoU", "-", f"{b['box_iou']:.2f}", f"{a['box_iou']:.2f}")
    console.print(table)
    examples = [(k, before[k]["answers"][0], after[k]["answers"][0], truth[0].answer(k)) for k in QUESTIONS]
    for kind, was, now, ref in examples:
        console.print(f"  {truth[0].file} {kind}: before {was[:60]!r} -> after {now!r} (truth {ref!r})")
    times = {"data_and_compose_s": round(t_see - t0), "before_s": round(t_before - t_see),
             "train_s": round(t_train - t_before), "after_s": round(t_after - t_train), "total_s": round(t_after - t0)}
    console.print(f"run folder: {run.path}; {times['total_s']} s in all (training {times['train_s']} s)")
    result = {"before": b, "after": a, "run": str(run.path), "seed": seed, "size": asdict(size), "times": times,
              "see": seen, "summary": run.summary}
    atomic_write_json(out_dir / "demo_result.json",
                      {**result, "answers": {"before": {k: v["answers"] for k, v in before.items()},
                                             "after": {k: v["answers"] for k, v in after.items()}}})
    return result
