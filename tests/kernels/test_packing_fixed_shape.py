"""Packed batches padded to one shape (rows x max_length) keep their loss, gradient and token counts."""

import torch

from tunelab.config.speed import SpeedCfg
from tunelab.engine.loop import loss_count
from tunelab.stages.sft import pad_rows_to
from tunelab.training.lm_loss import sft_loss


def test_short_last_batch_padded_with_empty_rows_keeps_the_loss():
    from tunelab.config import LoraCfg
    from tunelab.methods import get_method
    from tunelab.models import load_model

    torch.manual_seed(0)
    model = get_method("lora").apply(load_model("tiny-llama"), LoraCfg(r=4, alpha=8, dropout=0.0))
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 49152, (1, 10), generator=gen)
    pos = torch.cat([torch.arange(6), torch.arange(4)])[None]
    labels = ids.masked_fill(pos == 0, -100)
    batch = {"input_ids": ids, "labels": labels, "position_ids": pos, "attention_mask": torch.ones_like(ids)}
    fixed = pad_rows_to(batch, 16, 0, rows=3)
    assert fixed["input_ids"].shape == (3, 16) and fixed["position_ids"][0, 10:].tolist() == list(range(6))
    assert loss_count(fixed) == loss_count(batch) and int(fixed["attention_mask"].sum()) == 10
    a, _ = sft_loss(model, batch, 0.0, SpeedCfg())
    b, _ = sft_loss(model, fixed, 0.0, SpeedCfg())
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
