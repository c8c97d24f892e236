"""Continued pretraining: next-token loss on every token of raw text.

Data: a .txt file (one document per line), .json/.jsonl records with a `text` field, or records in a chat
format (alpaca, sharegpt, messages), whose user turns are the documents (the text inside an instruction set,
e.g. the articles of a classification set). Each document is tokenized, followed by the end-of-sequence
token, and the documents are concatenated and cut into blocks of `data.max_length` tokens (the last, shorter
block is kept). No chat template is applied; every token is a target. The train/validation split is made over
documents, before chunking, so no document is in both.
Multi-task: several data.train sources are tasks; weights count documents, each task keeps its own
validation blocks, and the loop logs eval_loss/<task> beside the overall eval_loss.
Loss: summed cross-entropy over all tokens, normalized by the engine over the accumulated batch (as SFT).
"""

from __future__ import annotations

from functools import partial

from tunelab.config.data import DataSource
from tunelab.data.sources import read_any
from tunelab.data.pipeline import (
    collate,
    load_conversations,
    mix_tasks,
    split_tasks,
)
from tunelab.data.stage_formats import TextDocument, load_text
from tunelab.data.templates import Tokenized
from tunelab.engine.loop import Recipe, fit
from tunelab.run import add_run_info
from tunelab.training.setup import chat_reference_data, finish_run, load_split, say, setup_run
from tunelab.training.lm_loss import sft_loss

CHAT_KEYS = ("messages", "conversations", "instruction")
"""A first record with one of these (and no `text`) makes the file a chat-format set: its user turns are read."""


def chunk_documents(docs: list[TextDocument], tokenizer, block: int) -> list[Tokenized]:
    """Tokenize, join with EOS between documents and cut into `block`-token samples (labels = inputs)."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    stream: list[int] = []
    for doc in docs:
        stream += tokenizer(doc.text, add_special_tokens=False)["input_ids"] + eos
    blocks = [stream[i:i + block] for i in range(0, len(stream), block)]
    return [Tokenized(list(b), list(b)) for b in blocks if len(b) > 1]


def load_documents(path: str, fmt: str = "auto", columns: dict[str, str] | None = None) -> list[TextDocument]:
    """Raw documents of a file: `load_text` for .txt and {"text"} records, else the user turns of chat records."""
    if not str(path).endswith(".txt"):
        first = next(iter(read_any(path)), None)
        data = first.data if first is not None else None
        if isinstance(data, dict) and "text" not in data and any(k in data for k in CHAT_KEYS):
            convs, _ = load_conversations(path, fmt, columns)
            docs = [TextDocument("\n".join(m["content"] for m in c.messages if m["role"] == "user"),
                                 c.meta.get("where", path)) for c in convs]
            return [d for d in docs if d.text.strip()]
    return load_text(path)


def load_task_blocks(cfg, tokenizer, seed: int) -> tuple[list[Tokenized], dict[str, list[Tokenized]], dict]:
    """Blocks of a multi-task run: (mixed training blocks, {task: validation blocks}, per-task counts)."""
    def load(path: str, src: DataSource) -> list[TextDocument]:
        return load_documents(path, src.format or cfg.data.format, src.columns or cfg.data.columns)

    block = cfg.data.max_length
    tasks = split_tasks(cfg.data, load, seed)
    docs_by_task: dict[str, list[TextDocument]] = {t.name: [] for t in tasks}
    for name, doc in mix_tasks(tasks, seed, cfg.data.max_samples):
        docs_by_task[name].append(doc)
    train_by_task = {name: chunk_documents(docs, tokenizer, block) for name, docs in docs_by_task.items()}
    val_sets = {t.name: chunk_documents(t.val, tokenizer, block) if t.val else [] for t in tasks}
    counts = {t.name: {"path": t.source.path, "weight": t.source.weight, "eval": t.source.eval,
                       "train_documents": len(docs_by_task[t.name]), "train_samples": len(train_by_task[t.name]),
                       "val_documents": len(t.val), "val_samples": len(val_sets[t.name])} for t in tasks}
    train = [b for blocks in train_by_task.values() for b in blocks]  # the loop shuffles every epoch
    return train, val_sets, counts


def run(cfg, progress: bool = True):
    """Continue pretraining on raw text end to end and return the run folder path."""
    setup = setup_run(cfg, progress)
    block = cfg.data.max_length
    val_sets: dict[str, list[Tokenized]] = {}
    if len(cfg.data.tasks()) > 1:
        train, val_sets, tasks = load_task_blocks(cfg, setup.tokenizer, cfg.train.seed)
        val = [b for v in val_sets.values() for b in v]
        stats = {"format": "text", "tasks": tasks, "train_documents": sum(t["train_documents"] for t in tasks.values()),
                 "val_documents": sum(t["val_documents"] for t in tasks.values())}
    else:
        src = cfg.data.sources()[0]  # one file, or a one-source list
        one = cfg.data.model_copy(update={"train": src.path, "eval": cfg.data.eval or src.eval})
        train_docs, val_docs = load_split(one, partial(load_documents, fmt=src.format or cfg.data.format,
                                                       columns=src.columns or cfg.data.columns), cfg.train.seed)
        train = chunk_documents(train_docs, setup.tokenizer, block)
        val = chunk_documents(val_docs, setup.tokenizer, block) if val_docs else []
        stats = {"format": "text", "train_documents": len(train_docs), "val_documents": len(val_docs)}
    stats.update(train_samples=len(train), val_samples=len(val), block_size=block,
                 train_tokens=sum(len(t.input_ids) for t in train))
    say(progress, f"pretrain: {stats['train_documents']} documents from {cfg.data.train_label()} -> {len(train)} "
        f"blocks of {block} tokens ({stats['train_tokens']:,} tokens); {len(val)} validation blocks")
    add_run_info(setup.run_dir, {"tasks": stats["tasks"]} if "tasks" in stats else {})
    result = fit(setup, Recipe(
        train=cfg.train, optim=cfg.optim, samples=train, val=val_sets or val,
        collate=partial(collate, pad_id=setup.tokenizer.pad_token_id),
        loss=partial(sft_loss, label_smoothing=cfg.train.label_smoothing, speed=cfg.train.speed),
        reference_data=chat_reference_data(cfg, setup)), progress=progress)
    return finish_run(setup, result.summary, stats)
