"""What the 2-process worker and the single-process references share: the samples, the models, the settings."""

from __future__ import annotations

from functools import partial

import torch

from tunelab.config import LoraCfg, TrainCfg
from tunelab.data.formats import Conversation
from tunelab.data.pipeline import collate
from tunelab.data.templates import resolve_template, tokenize_conversation
from tunelab.methods import get_method
from tunelab.models import load_model

N_SAMPLES = 9  # with 2 ranks x batch 2 the last micro-batch of each epoch has 1 sample: rank 1 gets padding
PER_RANK_BATCH = 2
WORLD = 2
SCENARIOS = {"ddp-full": ("ddp", "full"), "fsdp-full": ("fsdp", "full"), "fsdp-lora": ("fsdp", "lora")}


def make_samples(tokenizer) -> list:
    tpl = resolve_template(tokenizer, None)
    out = []
    for i in range(N_SAMPLES):
        conv = Conversation([{"role": "user", "content": f"question {i} " + "about things " * (i % 5)},
                             {"role": "assistant", "content": f"answer {i} " + "with detail " * (3 * (i % 4))}])
        out.append(tokenize_conversation(tokenizer, tpl, conv, 128))
    return out


def make_model(method: str) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = LoraCfg(r=4, alpha=8, dropout=0.0) if method == "lora" else None
    return get_method(method).apply(load_model("tiny-llama"), cfg)


def train_cfg(batch_size: int, **extra) -> TrainCfg:
    """4 optimizer steps of 2 micro-batches, clipping on, a checkpoint after step 2."""
    return TrainCfg(**{"max_steps": 4, "batch_size": batch_size, "grad_accum": 2, "lr": 1e-3, "warmup_ratio": 0.0,
                       "scheduler": "linear", "max_grad_norm": 1.0, "seed": 7, "save_every": 2, **extra})


def recording_collate(samples: list, seen: list):
    """collate(pad_id=2) that also records which samples (by index) each micro-batch held."""
    index = {id(s): i for i, s in enumerate(samples)}

    def fn(batch):
        seen.append([index[id(s)] for s in batch])
        return collate(batch, pad_id=2)

    return fn


plain_collate = partial(collate, pad_id=2)
