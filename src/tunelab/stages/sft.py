"""Supervised fine-tuning: next-token loss on the assistant's turns only.

Collator: right-padded (B, T) batches with -100 on everything but assistant tokens, or packed rows
with per-sample position_ids when data.packing is on (tunelab.data.packing).
Loss: summed cross-entropy over target tokens (the engine normalizes by the accumulated count).
Multi-task: several data.train sources are tasks mixed by weight; each keeps its own validation set and
the loop logs eval_loss/<task> beside the overall eval_loss (tunelab.data.pipeline.split_tasks).
"""

from __future__ import annotations

from functools import partial

import torch
from rich.console import Console

from tunelab.config import RunCfg
from tunelab.data.packing import collate_packed
from tunelab.data.pipeline import collate, epoch_order, prepare_data
from tunelab.data.streaming import check_streaming, prepare_stream
from tunelab.engine.loop import fit
from tunelab.engine.optim import resolve_name
from tunelab.kernels.train import speed_context
from tunelab.models import pick_device
from tunelab.models.vision import is_vision_model
from tunelab.run import add_run_info
from tunelab.training.lm_loss import sft_loss
from tunelab.training.setup import chat_reference_data, finish_run, setup_run


def packing_by_default(cfg: RunCfg) -> bool:
    """Turn data.packing on when the user left it unset and the run trains on CUDA with the fast path.

    Packing removes padding (rows of data.max_length, no attention across samples; loss equal to the
    unpacked batch, tested). `data.packing: false` keeps padded batches; CPU runs are unchanged.
    Returns whether packing was switched on here.
    """
    if "packing" in cfg.data.model_fields_set or cfg.data.streaming or cfg.train.speed.mode == "plain":
        return False
    if is_vision_model(cfg.model.name):  # image samples are never packed (tunelab.data.vision)
        return False
    if pick_device(cfg.train.device).type != "cuda":
        return False
    cfg.data.packing = True
    return True


def pad_rows_to(batch: dict, width: int, pad_id: int, rows: int | None = None) -> dict:
    """Pad a packed batch to `rows` x `width` tokens so every step has one shape (compiled layers reuse one graph).

    The padding is its own segment (positions restart at 0) with no labels and attention_mask 0, so the
    loss, its gradient and the token counts are unchanged; an epoch's short last batch gets empty rows.
    """
    b, t = batch["input_ids"].shape
    rows = max(rows or b, b)
    if t >= width and rows == b:
        return batch
    width = max(width, t)
    fill = {"input_ids": pad_id, "labels": -100, "attention_mask": 0}
    out = {}
    for k, v in batch.items():
        if k in fill:
            out[k] = torch.full((rows, width), fill[k], dtype=v.dtype)
        elif k == "position_ids":
            out[k] = torch.arange(width, dtype=v.dtype).repeat(rows, 1)
        else:
            continue
        out[k][:b, :t] = v
        if k == "position_ids":
            out[k][:b, t:] = torch.arange(width - t, dtype=v.dtype)
    return {**batch, **out}


def _collate_fixed(rows, pad_id: int, width: int, batch_size: int) -> dict:
    return pad_rows_to(collate_packed(rows, pad_id=pad_id), width, pad_id, batch_size)


def run(cfg: RunCfg, progress: bool = True):
    """Train an SFT run end to end and return the run folder path."""
    if cfg.data.streaming:  # read lazily from JSONL (tunelab.data.streaming); checked before loading the model
        check_streaming(cfg)
    packing_by_default(cfg)
    setup = setup_run(cfg, progress)
    if setup.processor is not None:  # a vision-language model: image+text samples (tunelab.data.vision)
        return run_vision(cfg, setup, progress)
    if cfg.data.streaming:
        data = prepare_stream(cfg.data, setup.tokenizer, setup.template, cfg.train.seed)
    else:
        data = prepare_data(cfg.data, setup.tokenizer, setup.template, cfg.train.seed, run_dir=setup.run_dir)
    if progress and not cfg.data.streaming:
        s = data.stats
        Console(stderr=True).print(
            f"data: {cfg.data.train_label()} detected as [bold]{s['format']}[/]; {s['train_samples']} train / "
            f"{s['val_samples']} validation samples, {s['train_target_tokens']:,} target tokens"
            + (f", {s['truncated']} truncated to {cfg.data.max_length}" if s["truncated"] else "")
            + (f", packed into {s['packing']['packed_rows']} rows ({s['packing']['fill_rate']:.0%} full)"
               if "packing" in s else "")
            + (f"; {s['rejected']} invalid records skipped, listed in {s['rejected_file']}" if s.get("rejected")
               else "")
            + "".join(f"\n  task {name}: {t['train_samples']} train / {t['val_samples']} validation"
                      for name, t in s.get("tasks", {}).items()))
    add_run_info(setup.run_dir, {"tasks": data.stats["tasks"]} if "tasks" in data.stats else {})
    pad_id = setup.tokenizer.pad_token_id
    collate_fn = partial(collate_packed if cfg.data.packing else collate, pad_id=pad_id)
    fixed = cfg.data.packing and cfg.train.speed.wants("flex_attention", setup.device.type)
    if fixed:  # one shape per step: compiled layers and the flex block mask never see a new length
        collate_fn = partial(_collate_fixed, pad_id=pad_id, width=cfg.data.max_length, batch_size=cfg.train.batch_size)
    optimizer = resolve_name(cfg.optim.name, setup.model, setup.device)
    with speed_context(setup.model, cfg.train, setup.device, packed=bool(cfg.data.packing), optimizer=optimizer,
                       say=progress):  # every wrapper is undone before the final save
        val = getattr(data, "val_sets", None) or data.val  # named per task in a multi-task run; streaming has none
        result = fit(setup.model, setup.method, data.train, val, collate_fn,
                     partial(sft_loss, label_smoothing=cfg.train.label_smoothing, speed=cfg.train.speed),
                     cfg.train, setup.run_dir,
                     setup.device, setup.trackers, epoch_order, progress=progress,
                     train_stream=getattr(data, "stream", None), optim=cfg.optim,
                     reference_data=chat_reference_data(cfg, setup))
    return finish_run(setup, result.summary, data.stats)



def run_vision(cfg: RunCfg, setup, progress: bool = True):
    """SFT of a vision-language model: processor-made samples (images expanded to image tokens, labels on the
    answers only), their image tensors batched beside the tokens, the plain next-token loss.

    The train.speed paths (fused LoRA, compiled layers, chunked loss, packing) assume a text decoder and are
    not applied here.
    """
    from tunelab.data.io import DataError
    from tunelab.data.vision import prepare_vision_data
    from tunelab.training.vision import collate_vision, vision_loss

    if cfg.data.streaming:
        raise DataError("data.streaming: not supported for vision models yet; set data.streaming: false")
    data = prepare_vision_data(cfg.data, setup.processor, setup.template, cfg.train.seed, run_dir=setup.run_dir)
    s = data.stats
    if progress:
        Console(stderr=True).print(
            f"data: {cfg.data.train_label()} detected as [bold]{s['format']}[/]; {s['train_samples']} train / "
            f"{s['val_samples']} validation samples with {s['train_images']} / {s['val_images']} images, "
            f"{s['train_target_tokens']:,} target tokens"
            + (f", {s['truncated']} truncated to {cfg.data.max_length}" if s["truncated"] else "")
            + (f"; {s['rejected']} invalid records skipped, listed in {s['rejected_file']}" if s.get("rejected")
               else ""))
    result = fit(setup.model, setup.method, data.train, data.val,
                 partial(collate_vision, pad_id=setup.tokenizer.pad_token_id), vision_loss, cfg.train,
                 setup.run_dir, setup.device, setup.trackers, epoch_order, progress=progress, optim=cfg.optim)
    return finish_run(setup, result.summary, s)
