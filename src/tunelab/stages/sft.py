"""Supervised fine-tuning: next-token loss on the assistant's turns only.

Collator: right-padded (B, T) batches with -100 on everything but assistant tokens, or packed rows
with per-sample position_ids when data.packing is on (tunelab.data.packing).
Loss: summed cross-entropy over target tokens (the engine normalizes by the accumulated count).
"""

from __future__ import annotations

from functools import partial

from rich.console import Console

from tunelab.config import RunCfg
from tunelab.data.packing import collate_packed, model_inputs
from tunelab.data.pipeline import collate, epoch_order, prepare_data
from tunelab.engine.loop import fit
from tunelab.engine.loss import causal_lm_loss_sum, count_targets
from tunelab.stages.recipe import finish_run, setup_run


def sft_loss(model, batch: dict, label_smoothing: float = 0.0):
    """(summed next-token loss over assistant tokens, their count) for one batch."""
    out = model(**model_inputs(batch), use_cache=False)  # packed batches carry position_ids instead of a mask
    return causal_lm_loss_sum(out.logits, batch["labels"], label_smoothing), count_targets(batch["labels"])


def run(cfg: RunCfg, progress: bool = True):
    """Train an SFT run end to end and return the run folder path."""
    setup = setup_run(cfg, progress)
    data = prepare_data(cfg.data, setup.tokenizer, setup.template, cfg.train.seed, run_dir=setup.run_dir)
    if progress:
        s = data.stats
        Console(stderr=True).print(
            f"data: {cfg.data.train_label()} detected as [bold]{s['format']}[/]; {s['train_samples']} train / "
            f"{s['val_samples']} validation samples, {s['train_target_tokens']:,} target tokens"
            + (f", {s['truncated']} truncated to {cfg.data.max_length}" if s["truncated"] else "")
            + (f", packed into {s['packing']['packed_rows']} rows ({s['packing']['fill_rate']:.0%} full)"
               if "packing" in s else "")
            + (f"; {s['rejected']} invalid records skipped, listed in {s['rejected_file']}" if s.get("rejected")
               else ""))
    pad_id = setup.tokenizer.pad_token_id
    collate_fn = partial(collate_packed if cfg.data.packing else collate, pad_id=pad_id)
    result = fit(setup.model, setup.method, data.train, data.val, collate_fn,
                 partial(sft_loss, label_smoothing=cfg.train.label_smoothing), cfg.train, setup.run_dir,
                 setup.device, setup.trackers, epoch_order, progress=progress)
    return finish_run(setup, result.summary, data.stats)
