"""`tunelab demo --vision`: build a small LLaVA from SmolLM2-135M, teach it to read generated shapes, prove it.

Steps, all on CPU and seeded:
1. data: PIL draws one to three shapes of one kind and colour (tunelab.demo.shapes); training records
   ask colour, shape, how many and the box in one conversation per image; held-out images come from
   another seed.
2. compose: SmolLM2-135M-Instruct + a SigLIP encoder and projector drawn from scratch, saved as a
   transformers LLaVA folder with its processor (tunelab.models.compose). The composed model answers
   every held-out question here ("before").
3. see: the new encoder is pretrained on the images' own labels with throwaway heads (no language
   model), the part a pretrained CLIP/SigLIP plays in LLaVA, and the projector is aligned with the
   language model's embedding table at the same time (LLaVA's first stage, done without running the
   language model): each image token is pulled toward a caption token's embedding.
4. train: `tunelab.train` on the records, the same path `tunelab train` takes: LoRA on the language
   model, the projector trained in full and the vision tower with LoRA (`train_projector`, `train_vision`).
5. after: the trained run answers every held-out question; the table shows colour, shape and count
   accuracy and the share of boxes with IoU >= 0.5, beside chance and the composed model's answers.
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
    GRID,
    QUESTIONS,
    SHAPES,
    ShapeImage,
    format_box,
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
    see_images: int = 6000
    see_steps: int = 1000
    epochs: int = 1
    batch_size: int = 8
    lr: float = 1.0e-3
    vision: VisionSpec = field(default_factory=lambda: VisionSpec(image_size=32, patch_size=8, hidden=128, layers=2,
                                                                  heads=4, mlp=512))


def demo_config(out_dir: Path, model_dir: Path, data_file: Path, size: VisionDemoSize, seed: int) -> dict:
    """The run config: LoRA r8 on the language model and the vision tower, the projector in full."""
    return {
        "model": {"name": str(model_dir)},
        "data": {"train": str(data_file), "val_size": 0.0, "max_length": 256},
        "method": {"name": "lora", "r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear",
                   "train_projector": True, "train_vision": True},
        "train": {"epochs": size.epochs, "batch_size": size.batch_size, "lr": size.lr, "warmup_ratio": 0.1,
                  "scheduler": "cosine", "seed": seed},
        "output_dir": str(out_dir / "run"),
    }


def label_targets(items: list[ShapeImage]) -> dict[str, torch.Tensor]:
    """The labels the encoder pretrains on: class indices for colour, shape, count and each box
    coordinate on the answer grid, and the box itself in 0..1 (N,) / (N, 4)."""
    box = torch.tensor([it.box for it in items], dtype=torch.float32) / 100
    return {"colour": torch.tensor([list(COLOURS).index(it.colour) for it in items]),
            "shape": torch.tensor([SHAPES.index(it.shape) for it in items]),
            "count": torch.tensor([it.count - 1 for it in items]),
            "grid": (box * GRID).round().long(), "box": box}


HEAD_SIZES = {"colour": len(COLOURS), "shape": len(SHAPES), "count": 3}


class LabelHeads(torch.nn.Module):
    """Throwaway heads that read every image token: colour, shape and count classes, each box coordinate
    as a grid class, and the box regressed. Applied per token (not to a pooled vector), so each token the
    language model later sees carries what the image shows and where."""

    def __init__(self, hidden: int):
        super().__init__()
        self.sizes = {**HEAD_SIZES, "grid": 4 * (GRID + 1), "box": 4}
        self.mlp = torch.nn.Sequential(torch.nn.Linear(hidden, 256), torch.nn.GELU(),
                                       torch.nn.Linear(256, sum(self.sizes.values())))

    def forward(self, feats: torch.Tensor) -> dict[str, torch.Tensor]:
        """feats (B, P, H) -> per head (B, P, classes); "grid" (B, P, 4, GRID+1); "box" (B, P, 4)."""
        out = dict(zip(self.sizes, self.mlp(feats).split(list(self.sizes.values()), dim=-1)))
        out["grid"] = out["grid"].unflatten(-1, (4, GRID + 1))
        return out


def label_loss(out: dict[str, torch.Tensor], y: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy of every class head and smooth L1 of the box, averaged over the tokens."""
    F = torch.nn.functional
    p = out["box"].shape[1]
    loss = sum(F.cross_entropy(out[k].flatten(0, 1), y[k].repeat_interleave(p)) for k in HEAD_SIZES)
    loss = loss + F.cross_entropy(out["grid"].flatten(0, 2), y["grid"].repeat_interleave(p, 0).flatten())
    return loss + 10 * F.smooth_l1_loss(out["box"], y["box"][:, None].expand_as(out["box"]))


def label_scores(out: dict[str, torch.Tensor], y: dict[str, torch.Tensor]) -> dict[str, float]:
    """What the heads read from the token-averaged logits: class accuracies, the share of boxes at IoU >= 0.5."""
    scores = {k: (out[k].mean(1).argmax(-1) == y[k]).float().mean().item() for k in HEAD_SIZES}
    pred = out["box"].mean(1)  # (B, 4) in 0..1
    w = (torch.minimum(pred[:, 2], y["box"][:, 2]) - torch.maximum(pred[:, 0], y["box"][:, 0])).clamp(min=0)
    h = (torch.minimum(pred[:, 3], y["box"][:, 3]) - torch.maximum(pred[:, 1], y["box"][:, 1])).clamp(min=0)
    area = lambda b: (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    iou = w * h / (area(pred) + area(y["box"]) - w * h)
    scores["box_iou@0.5"] = (iou >= 0.5).float().mean().item()
    return scores


def caption_ids(items: list[ShapeImage], tokenizer, n_tokens: int) -> torch.Tensor:
    """What each image's tokens are aligned to: its answers written as the answers are tokenized,
    colour, shape, count and box in fixed slots (`red tri angle 3 [1, 0, 9, 8]`, shorter words padded
    with a space), cut or left short at n_tokens (N, n_tokens); -1 marks a token with no target."""
    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    space = ids(" ")[-1]
    kinds = ("colour", "shape", "count", "box")
    width = {"colour": max(len(ids(c)) for c in COLOURS), "shape": max(len(ids(s)) for s in SHAPES),
             "count": 1, "box": None}
    rows = []
    for it in items:
        row: list[int] = []
        for kind in kinds:
            part = ids(it.answer(kind))
            row += part + [space] * ((width[kind] or len(part)) - len(part))
        rows.append((row + [-1] * n_tokens)[:n_tokens])
    return torch.tensor(rows)


def pixels_of(processor, items: list[ShapeImage], image_root: Path) -> torch.Tensor:
    """The items' images as the model's processor prepares them (N, 3, H, W)."""
    from PIL import Image

    return processor.image_processor([Image.open(image_root / it.file).convert("RGB") for it in items],
                                     return_tensors="pt")["pixel_values"]


def tower_features(tower: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """The features LLaVA hands its projector (vision_feature_layer -1: the last layer's hidden states,
    before SigLIP's final norm), so the heads and the alignment train exactly what the model uses."""
    return tower(pixels, output_hidden_states=True).hidden_states[-1]


def align_loss(tokens: torch.Tensor, target: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
    """Mean squared distance of projected image tokens (B, P, D) to their caption tokens' embeddings,
    relative to the embeddings' mean squared norm; tokens marked -1 have no target."""
    keep = target >= 0
    scale = embeddings.pow(2).sum(-1).mean()
    return (tokens[keep] - embeddings[target[keep]]).pow(2).sum(-1).mean() / scale


def read_back(tokens: torch.Tensor, target: torch.Tensor, embeddings: torch.Tensor) -> float:
    """Share of images whose projected tokens all have their caption token as nearest vocabulary embedding."""
    nearest = torch.cdist(tokens.flatten(0, 1), embeddings).argmin(-1).view(target.shape)
    return ((nearest == target) | (target < 0)).all(-1).float().mean().item()


def pretrain_tower(tower: torch.nn.Module, pixels: torch.Tensor, y: dict[str, torch.Tensor], steps: int,
                   seed: int, held: tuple[torch.Tensor, dict[str, torch.Tensor]] | None = None,
                   projector: torch.nn.Module | None = None, embeddings: torch.Tensor | None = None,
                   captions: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict:
    """Train a vision tower with LabelHeads on labelled pixels; the heads are thrown away afterwards.

    With a projector, the language model's (frozen) embedding matrix and caption ids (train, held-out),
    the projector trains too, so that each image token lands on its caption token's embedding (LLaVA's
    first stage, feature alignment, done against the embedding table instead of through the language
    model, which a CPU cannot afford). Returns the last batch's loss and, with `held` (pixels, labels),
    the heads' scores on those images, plus the share of them whose tokens read back as their caption.
    """
    torch.manual_seed(seed)
    heads = LabelHeads(tower.config.hidden_size)
    params = [*tower.parameters(), *heads.parameters(), *(projector.parameters() if projector is not None else [])]
    opt = torch.optim.AdamW(params, lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    tower.train()
    for _ in range(steps):
        idx = torch.randint(0, len(pixels), (64,), generator=gen)
        batch = {k: v[idx] for k, v in y.items()}
        feats = tower_features(tower, pixels[idx])  # (64, P, H)
        loss = label_loss(heads(feats), batch)
        if projector is not None:
            loss = loss + 10 * align_loss(projector(feats), captions[0][idx], embeddings)  # (64, P, D)
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    result: dict = {"loss": loss.item()}
    if held is not None:
        tower.eval()
        with torch.no_grad():
            feats = tower_features(tower, held[0])
            result["heldout"] = label_scores(heads(feats), held[1])
            if projector is not None:
                result["heldout"]["read_back"] = read_back(projector(feats), captions[1], embeddings)
    return result


def see_shapes(model_dir: Path, items: list[ShapeImage], image_root: Path, steps: int, seed: int,
               heldout: list[ShapeImage] | None = None) -> dict:
    """Pretrain the composed model's vision tower on the images' labels; save it back into model_dir.

    The part a pretrained CLIP/SigLIP plays in LLaVA: the language model then learns to read features
    that already separate colours, shapes, counts and places. The projector is aligned at the same
    time: each image token is pulled toward the embedding of a caption token (`caption_ids`). The
    encoder and projector are kept, the heads thrown away. Returns the heads' scores on the held-out
    images (which never train anything) and how many of them read back as their caption.
    """
    from tunelab.models.vision import load_processor, load_vision_model

    model = load_vision_model(model_dir, torch.float32)
    proc = load_processor(model_dir)
    held = (pixels_of(proc, heldout, image_root), label_targets(heldout)) if heldout else None
    n_tokens = model.config.image_seq_length
    captions = (caption_ids(items, proc.tokenizer, n_tokens),
                caption_ids(heldout or [], proc.tokenizer, n_tokens).view(-1, n_tokens))
    embeddings = model.get_input_embeddings().weight.detach()
    result = pretrain_tower(model.model.vision_tower, pixels_of(proc, items, image_root), label_targets(items),
                            steps, seed, held, model.model.multi_modal_projector, embeddings, captions)
    model.save_pretrained(model_dir, safe_serialization=True)
    return result


def ask_heldout(model, processor, template: str, truth: list[ShapeImage], image_root: Path,
                max_new_tokens: int = 14) -> dict:
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


def constant_box_hits(labelled: list[ShapeImage], truth: list[ShapeImage]) -> float:
    """The box row's baseline: the share of `truth` at IoU >= 0.5 when every answer is the average box
    of the labelled images (a model that ignores the image can reach this)."""
    mean = tuple(sum(it.box[i] for it in labelled) / len(labelled) for i in range(4))
    answer = format_box(mean)
    return sum(score_answer("box", answer, t) >= 0.5 for t in truth) / len(truth)


def summarize(asked: dict) -> dict[str, float]:
    """Colour, shape and count accuracy, the share of boxes with IoU >= 0.5 and the mean IoU."""
    n = len(asked["colour"]["scores"])
    return {**{k: sum(asked[k]["scores"]) / n for k in ("colour", "shape", "count")},
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
    t_compose = time.time()
    base = load_vision_model(model_dir, torch.float32)
    proc = load_processor(model_dir)
    console.print("asking the composed model (nothing trained yet)...")
    before = ask_heldout(base, proc, proc.chat_template, truth, out_dir / "data")
    del base
    t_before = time.time()

    seen = see_shapes(model_dir, see_items, out_dir / "data", size.see_steps, seed, heldout=truth)
    t_see = time.time()
    held = seen["heldout"]
    console.print(f"vision encoder and projector pretrained on {size.see_images} labelled images, "
                  f"{size.see_steps} steps; on the held-out images the throwaway heads read colour "
                  f"{held['colour']:.0%}, shape {held['shape']:.0%}, count {held['count']:.0%}, box IoU >= 0.5 "
                  f"{held['box_iou@0.5']:.0%}, and {held['read_back']:.0%} of the images' tokens read back as "
                  f"their caption")

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
    table.add_row("how many: accuracy", f"{1 / 3:.0%}", f"{b['count']:.0%}", f"{a['count']:.0%}")
    table.add_row("box: IoU >= 0.5", f"{constant_box_hits(see_items, truth):.0%}", f"{b['box_iou@0.5']:.0%}",
                  f"{a['box_iou@0.5']:.0%}")
    table.add_row("box: mean IoU", "-", f"{b['box_iou']:.2f}", f"{a['box_iou']:.2f}")
    console.print(table)
    examples = [(k, before[k]["answers"][0], after[k]["answers"][0], truth[0].answer(k)) for k in QUESTIONS]
    for kind, was, now, ref in examples:
        console.print(f"  {truth[0].file} {kind}: before {was[:60]!r} -> after {now!r} (truth {ref!r})")
    times = {"data_and_compose_s": round(t_compose - t0), "before_s": round(t_before - t_compose),
             "see_s": round(t_see - t_before), "train_s": round(t_train - t_see), "after_s": round(t_after - t_train),
             "total_s": round(t_after - t0)}
    console.print(f"run folder: {run.path}; {times['total_s']} s in all (training {times['train_s']} s)")
    result = {"before": b, "after": a, "run": str(run.path), "seed": seed, "size": asdict(size), "times": times,
              "see": seen, "summary": run.summary}
    atomic_write_json(out_dir / "demo_result.json",
                      {**result, "answers": {"before": {k: v["answers"] for k, v in before.items()},
                                             "after": {k: v["answers"] for k, v in after.items()}}})
    return result
