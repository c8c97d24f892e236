"""From files to batches: read, parse, split, tokenize, collate."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from tunelab.config.schema import DataCfg
from tunelab.data.formats import Conversation, parse_records
from tunelab.data.io import DataError, read_records
from tunelab.data.templates import IGNORE_INDEX, Tokenized, tokenize_conversation


@dataclass
class PreparedData:
    """Tokenized train/validation samples and what was found on the way (shown to the user, saved in the run)."""

    train: list[Tokenized]
    val: list[Tokenized]
    val_conversations: list[Conversation]
    format: str
    stats: dict


def split_train_val(items: list, val_size: float, seed: int) -> tuple[list, list]:
    """Seeded random split; at least one validation item when val_size > 0 and there are 2+ items."""
    if val_size <= 0 or len(items) < 2:
        return list(items), []
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_val = min(max(1, round(len(items) * val_size)), len(items) - 1)
    val_idx = set(order[:n_val])
    return [x for i, x in enumerate(items) if i not in val_idx], [x for i, x in enumerate(items) if i in val_idx]


def load_conversations(path: str, fmt: str = "auto") -> tuple[list[Conversation], str]:
    """Read a data file and parse every record (format auto-detected unless given)."""
    return parse_records(read_records(path), fmt)


def prepare_data(cfg: DataCfg, tokenizer, template: str, seed: int) -> PreparedData:
    """Everything the engine needs from the data section of the config."""
    train_convs, fmt = load_conversations(cfg.train, cfg.format)
    if cfg.max_samples:
        train_convs = train_convs[: cfg.max_samples]
    if cfg.eval:
        val_convs, _ = load_conversations(cfg.eval, cfg.format)
    else:
        train_convs, val_convs = split_train_val(train_convs, cfg.val_size, seed)
    train = [tokenize_conversation(tokenizer, template, c, cfg.max_length) for c in train_convs]
    val = [tokenize_conversation(tokenizer, template, c, cfg.max_length) for c in val_convs]
    if not train:
        raise DataError(f"{cfg.train}: no training samples left after the validation split")
    stats = {
        "format": fmt,
        "train_samples": len(train),
        "val_samples": len(val),
        "train_tokens": sum(len(t.input_ids) for t in train),
        "train_target_tokens": sum(t.n_targets for t in train),
        "truncated": sum(t.truncated for t in train + val),
    }
    return PreparedData(train, val, val_convs, fmt, stats)


def collate(samples: list[Tokenized], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of samples into input_ids / attention_mask / labels tensors of shape (B, T)."""
    width = max(len(s.input_ids) for s in samples)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(samples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    for i, s in enumerate(samples):
        n = len(s.input_ids)
        ids[i, :n] = torch.tensor(s.input_ids)
        labels[i, :n] = torch.tensor(s.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The sample order of one epoch: a permutation fixed by (seed, epoch), so resuming replays it exactly."""
    g = torch.Generator().manual_seed(seed * 1000 + epoch)
    return torch.randperm(n, generator=g).tolist()
