"""Continued pretraining: next-token loss on every token of raw text.

Data: a .txt file (one document per line) or .json/.jsonl records with a `text` field. Each document is
tokenized, followed by the end-of-sequence token, and the documents are concatenated and cut into blocks of
`data.max_length` tokens (the last, shorter block is kept). No chat template is applied; every token is a
target. The train/validation split is made over documents, before chunking, so no document is in both.
Loss: summed cross-entropy over all tokens, normalized by the engine over the accumulated batch (as SFT).
"""

from __future__ import annotations

from functools import partial

from tunelab.data.pipeline import collate, epoch_order
from tunelab.data.stage_formats import TextDocument, load_text
from tunelab.data.templates import Tokenized
from tunelab.engine.loop import fit
from tunelab.stages.recipe import finish_run, load_split, say, setup_run
from tunelab.stages.sft import sft_loss


def chunk_documents(docs: list[TextDocument], tokenizer, block: int) -> list[Tokenized]:
    """Tokenize, join with EOS between documents and cut into `block`-token samples (labels = inputs)."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    stream: list[int] = []
    for doc in docs:
        stream += tokenizer(doc.text, add_special_tokens=False)["input_ids"] + eos
    blocks = [stream[i:i + block] for i in range(0, len(stream), block)]
    return [Tokenized(list(b), list(b)) for b in blocks if len(b) > 1]


def run(cfg, progress: bool = True):
    """Continue pretraining on raw text end to end and return the run folder path."""
    setup = setup_run(cfg, progress)
    train_docs, val_docs = load_split(cfg.data, load_text, cfg.train.seed)
    block = cfg.data.max_length
    train = chunk_documents(train_docs, setup.tokenizer, block)
    val = chunk_documents(val_docs, setup.tokenizer, block) if val_docs else []
    stats = {"format": "text", "train_documents": len(train_docs), "val_documents": len(val_docs),
             "train_samples": len(train), "val_samples": len(val), "block_size": block,
             "train_tokens": sum(len(t.input_ids) for t in train)}
    say(progress, f"pretrain: {len(train_docs)} documents from {cfg.data.train} -> {len(train)} blocks of "
        f"{block} tokens ({stats['train_tokens']:,} tokens); {len(val)} validation blocks")
    result = fit(setup.model, setup.method, train, val, partial(collate, pad_id=setup.tokenizer.pad_token_id),
                 partial(sft_loss, label_smoothing=cfg.train.label_smoothing), cfg.train, setup.run_dir,
                 setup.device, setup.trackers, epoch_order, progress=progress)
    return finish_run(setup, result.summary, stats)
