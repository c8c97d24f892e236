"""The next-token loss on target tokens: SFT, continued pretraining and selftrain's rejection mode train with it."""

from __future__ import annotations

from tunelab.config.speed import SpeedCfg
from tunelab.data.packing import model_inputs
from tunelab.engine.loop import LOSS_COUNT_KEY
from tunelab.engine.loss import causal_lm_loss_sum, count_targets
from tunelab.kernels.train import chunked_causal_lm_loss, with_block_mask


def sft_loss(model, batch: dict, label_smoothing: float = 0.0, speed: SpeedCfg | None = None):
    """(summed next-token loss over assistant tokens, their count) for one batch.

    With `speed.chunked_ce` (train.speed's default; speed=None means the plain path) the loss comes from the
    final hidden states and lm_head chunk by chunk (tunelab.kernels.train), never holding (B, T, V) logits;
    same value and gradients as the plain path.
    """
    inputs = with_block_mask(model, model_inputs(batch))  # packed: position_ids (+ flex block mask) instead of a mask
    count = batch.get(LOSS_COUNT_KEY) or count_targets(batch["labels"])  # the loop counts on the host: no sync
    if speed is not None and speed.wants("chunked_ce", batch["labels"].device.type):
        loss = chunked_causal_lm_loss(model, inputs, batch["labels"], label_smoothing, speed)
        if loss is not None:
            return loss, count
    out = model(**inputs, use_cache=False)
    return causal_lm_loss_sum(out.logits, batch["labels"], label_smoothing), count
