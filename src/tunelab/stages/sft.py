"""Supervised fine-tuning: next-token loss on the assistant's turns only.

Collator: right-padded (B, T) batches with -100 on everything but assistant tokens.
Loss: summed cross-entropy over target tokens (the engine normalizes by the accumulated count).
"""

from __future__ import annotations

from functools import partial

from rich.console import Console

from tunelab.config import RunCfg
from tunelab.data.pipeline import collate, epoch_order, prepare_data
from tunelab.engine.loop import fit
from tunelab.engine.loss import causal_lm_loss_sum, count_targets
from tunelab.stages.recipe import finish_run, setup_run


def sft_loss(model, batch: dict, label_smoothing: float = 0.0):
    """(summed next-token loss over assistant tokens, their count) for one batch."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    return causal_lm_loss_sum(out.logits, batch["labels"], label_smoothing), count_targets(batch["labels"])


def run(cfg: RunCfg, progress: bool = True):
    """Train an SFT run end to end and return the run folder path."""
    setup = setup_run(cfg, progress)
    data = prepare_data(cfg.data, setup.tokenizer, setup.template, cfg.train.seed)
    if progress:
        s = data.stats
        Console(stderr=True).print(
            f"data: {cfg.data.train} detected as [bold]{s['format']}[/]; {s['train_samples']} train / "
            f"{s['val_samples']} validation samples, {s['train_target_tokens']:,} target tokens"
            + (f", {s['truncated']} truncated to {cfg.data.max_length}" if s["truncated"] else ""))
    pad_id = setup.tokenizer.pad_token_id
    result = fit(setup.model, setup.method, data.train, data.val, partial(collate, pad_id=pad_id),
                 partial(sft_loss, label_smoothing=cfg.train.label_smoothing), cfg.train, setup.run_dir,
                 setup.device, setup.trackers, epoch_order, progress=progress)
    return finish_run(setup, result.summary, data.stats)
