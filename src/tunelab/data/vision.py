"""Image+text conversations -> processor inputs with label masks, and batches of them.

A vision model's processor renders a conversation with its own chat template (messages as content parts),
expands each image into the model's image tokens and turns the images into pixel tensors. Labels are set
on the assistant turns only: each turn's token range is found by processing the conversation up to the
start and up to the end of that turn (the processor's output for a prefix must be a prefix of the full
output, checked), so image tokens, the system prompt and the user's turns never carry loss, whatever
the family's image expansion looks like.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from tunelab.data.formats import Conversation
from tunelab.data.images import IMAGE_TOKEN, content_parts
from tunelab.data.io import DataError
from tunelab.data.packing import pad_rows
from tunelab.data.templates import IGNORE_INDEX, Tokenized, TemplateError

PIXEL_KEYS = ("pixel_values", "pixel_attention_mask", "image_grid_thw", "image_sizes")
"""Processor outputs that belong to the images (carried with each sample and batched by `collate_vision`)."""
TOKEN_KEYS = ("mm_token_type_ids",)
"""Processor outputs with one value per token, 0 on text (Qwen2-VL's image/video marks, from which the model
builds its M-RoPE positions): cut with the ids and padded with 0 by `collate_vision`."""
MODEL_KEYS = ("input_ids", "attention_mask", *TOKEN_KEYS, *PIXEL_KEYS)
"""Everything of a processor's output that goes to the model."""


@dataclass
class VisionSample(Tokenized):
    """A tokenized sample with its image tensors (`pixels`: PIXEL_KEYS present for this sample, batch dim 1)
    and the per-token processor outputs its family has (`per_token`: TOKEN_KEYS, one value per input id)."""

    pixels: dict[str, torch.Tensor] = field(default_factory=dict)
    n_images: int = 0
    per_token: dict[str, list[int]] = field(default_factory=dict)


def processor_messages(messages: list[dict]) -> list[dict]:
    """tunelab messages (text with IMAGE_TOKENs) -> content parts for a processor's chat template."""
    return [{"role": m["role"], "content": content_parts(m["content"])} for m in messages]


def render_vision(processor, template: str, messages: list[dict], add_generation_prompt: bool = False) -> str:
    """The conversation as the processor's template writes it (one image placeholder per image, unexpanded)."""
    return processor.apply_chat_template(processor_messages(messages), chat_template=template, tokenize=False,
                                         add_generation_prompt=add_generation_prompt)


def process(processor, text: str, images: list) -> dict[str, torch.Tensor]:
    """Run the processor on one text with its images (PIL); (1, T) input_ids plus the image tensors."""
    kw = {"images": [images]} if images else {}
    return dict(processor(text=[text], return_tensors="pt", add_special_tokens=False, **kw))


def tokenize_vision(processor, template: str, conv: Conversation, max_length: int) -> VisionSample:
    """Process one conversation with its images; labels only on assistant tokens (end-of-turn marker included).

    A sample longer than `max_length` keeps its prompt (images cannot be cut) and loses the end of its
    answer; a prompt alone longer than max_length, or a cut that would fall on or before an image of a later
    turn (the model needs every image's tokens with its pixels), is a DataError naming the record.
    """
    where = conv.meta.get("where", "a record")
    images = [img.open() for img in conv.images]
    msgs = conv.messages
    full = process(processor, render_vision(processor, template, msgs), images)
    ids = full["input_ids"][0].tolist()
    labels = [IGNORE_INDEX] * len(ids)
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        start = _prefix_len(processor, template, msgs[:i], images, ids, where, generation_prompt=True)
        end = _prefix_len(processor, template, msgs[: i + 1], images, ids, where, generation_prompt=False)
        labels[start:end] = ids[start:end]
    if not any(x != IGNORE_INDEX for x in labels):
        raise DataError(f"{where}: no trainable tokens after rendering (empty answer?)")
    pixels = {k: v for k, v in full.items() if k in PIXEL_KEYS}
    per_token = {k: v[0].tolist() for k, v in full.items() if k in TOKEN_KEYS}
    truncated = False
    if len(ids) > max_length:
        first = next(k for k, x in enumerate(labels) if x != IGNORE_INDEX)
        if first >= max_length:
            raise DataError(f"{where}: the prompt with its image(s) is {first} tokens, more than data.max_length="
                            f"{max_length}; raise data.max_length or use smaller/fewer images")
        image_id = getattr(processor, "image_token_id", None)
        if image_id is not None and image_id in ids[max_length:]:
            raise DataError(f"{where}: {len(ids)} tokens, and cutting at data.max_length={max_length} would cut off "
                            "an image of a later turn; raise data.max_length, use smaller images or split the "
                            "conversation")
        ids, labels, truncated = ids[:max_length], labels[:max_length], True
        per_token = {k: v[:max_length] for k, v in per_token.items()}
    return VisionSample(ids, labels, truncated, pixels=pixels, n_images=len(images), per_token=per_token)


def _prefix_len(processor, template: str, msgs: list[dict], images: list, full_ids: list[int], where: str,
                generation_prompt: bool) -> int:
    """How many of the full sample's tokens the first messages (+ the assistant header) account for."""
    if not msgs:  # a conversation that opens with the assistant: its turn starts at token 0
        return 0
    text = render_vision(processor, template, msgs, add_generation_prompt=generation_prompt)
    n_img = sum(m["content"].count(IMAGE_TOKEN) for m in msgs)
    ids = process(processor, text, images[:n_img])["input_ids"][0].tolist()
    if full_ids[: len(ids)] != ids:
        raise TemplateError(f"{where}: the processor's chat template does not render conversations incrementally "
                            "(a turn changes earlier text), so the assistant's tokens cannot be located; set "
                            "model.chat_template to a template that appends turns")
    return len(ids)


def tokenize_all_vision(processor, template: str, convs: list[Conversation], max_length: int,
                        rejects: list[dict] | None) -> list[VisionSample]:
    """Process conversations; with `rejects`, ones that cannot be trained on are recorded and skipped."""
    out = []
    for c in convs:
        try:
            out.append(tokenize_vision(processor, template, c, max_length))
        except (DataError, TemplateError) as e:
            if rejects is None:
                raise
            rejects.append({"where": c.meta.get("where", "?"), "error": str(e),
                            "record": {"messages": c.messages, "images": [i.label for i in c.images]}})
    return out


@dataclass
class VisionData:
    """Processed train/validation samples of a vision run, with the counts shown to the user and saved."""

    train: list[VisionSample]
    val: list[VisionSample]
    val_conversations: list[Conversation]
    stats: dict
    rejects: list[dict]


def prepare_vision_data(cfg, processor, template: str, seed: int, run_dir: str | Path | None = None) -> VisionData:
    """The data section of a vision run, processed (not cached: pixel tensors are cheap to rebuild from images).

    Same split, max_samples, skip_invalid and rejects file as text SFT (tunelab.data.pipeline).
    """
    from tunelab.data.pipeline import split_conversations
    from tunelab.runfolder import RunFolder
    from tunelab.utils.io import atomic_write_jsonl

    if len(cfg.tasks()) > 1:
        raise DataError("data.train: several tasks are not supported for vision models yet; merge the files")
    if cfg.packing:
        raise DataError("data.packing: vision samples are not packed (their image tensors would have to be split "
                        "per sample); set data.packing: false")
    rejects: list[dict] | None = [] if cfg.skip_invalid else None
    empty: list[dict] = []
    train_convs, val_convs, fmt, _ = split_conversations(cfg, seed, rejects, empty)
    train = tokenize_all_vision(processor, template, train_convs, cfg.max_length, rejects)
    val = tokenize_all_vision(processor, template, val_convs, cfg.max_length, rejects)
    rejects = (rejects or []) + empty
    if not train:
        raise DataError(f"{cfg.train_label()}: no training samples left" +
                        (f" ({len(rejects)} records rejected; see rejected.jsonl in the run folder)" if rejects else ""))
    stats = {"format": fmt, "train_samples": len(train), "val_samples": len(val),
             "train_tokens": sum(len(t.input_ids) for t in train),
             "train_target_tokens": sum(t.n_targets for t in train),
             "train_images": sum(t.n_images for t in train), "val_images": sum(t.n_images for t in val),
             "truncated": sum(t.truncated for t in train + val), "rejected": len(rejects),
             "empty_answers": len(empty)}
    if rejects and run_dir is not None:
        path = RunFolder(run_dir).rejected_path
        atomic_write_jsonl(path, rejects)
        stats["rejected_file"] = str(path)
    return VisionData(train, val, val_convs, stats, rejects)


def collate_vision(samples: list[VisionSample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad ids/labels/mask (and TOKEN_KEYS, with 0) to (B, T) and batch the image tensors of the samples
    that have images.

    pixel_values of LLaVA-style models (n_images, C, H, W) and Qwen2-VL's patches (n_patches, D) are
    concatenated in sample order, as are Qwen2-VL's image_grid_thw (n_images, 3) that say which patches
    belong to which image; Idefics3's (1, n_images, C, H, W) are padded with all-zero images (which the
    model skips) to the batch's largest image count.
    """
    ids, labels, mask = pad_rows(samples, pad_id)
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    for key in TOKEN_KEYS:
        if any(key in s.per_token for s in samples):
            rows = torch.zeros_like(ids)  # (B, T); 0 = text, which padding and text-only samples are
            for i, s in enumerate(samples):
                values = s.per_token.get(key, [])
                rows[i, :len(values)] = torch.tensor(values, dtype=torch.long)
            batch[key] = rows
    with_images = [s for s in samples if s.pixels]
    for key in PIXEL_KEYS:
        parts = [s.pixels[key] for s in with_images if key in s.pixels]
        if not parts:
            continue
        per_sample = (key == "pixel_values" and parts[0].dim() == 5) or \
            (key == "pixel_attention_mask" and parts[0].dim() == 4)  # Idefics3: (1, n_images, ...)
        if per_sample:
            most = max(p.shape[1] for p in parts)
            parts = [torch.cat([p, p.new_zeros((p.shape[0], most - p.shape[1], *p.shape[2:]))], 1) for p in parts]
        batch[key] = torch.cat(parts, 0)
    return batch

