"""Batch prediction over a data file with a run's own template (`tunelab generate`)."""

from __future__ import annotations

from pathlib import Path

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from tunelab.data.formats import FORMATS, Conversation, detect_format
from tunelab.data.images import has_images
from tunelab.data.io import DataError, Record, read_records
from tunelab.infer.generate import generate
from tunelab.utils.io import atomic_write_jsonl


def read_prompts(path: str) -> list[Conversation]:
    """Conversations to answer: like training records, but the answer may be absent (Alpaca without output)."""
    records = read_records(path)
    if not records:
        raise DataError(f"{path}: no records to answer (the file is empty)")
    fmt = "vision" if any(has_images(r) for r in records) else detect_format(records[0])
    out = []
    for rec in records:
        if fmt == "alpaca" and "output" not in rec.data:
            rec = Record({**rec.data, "output": ""}, rec.where, rec.source)
        conv = FORMATS[fmt](rec)
        if not any(m["role"] == "user" for m in conv.messages):
            raise DataError(f"{rec.where}: no user turn to answer")
        out.append(conv)
    return out


def predict_file(model, tokenizer, template: str, data: str, out: str | Path, max_new_tokens: int = 128,
                 temperature: float = 0.0, top_p: float = 1.0, batch_size: int = 8, seed: int = 0,
                 limit: int | None = None, progress: bool = False, processor=None) -> int:
    """Answer each record's conversation (up to its last user turn); write {prompt, reference, prediction} rows.

    With `processor` (a vision run's), each record's images go to the model with its prompt.

    Records whose last turn is the assistant's keep that answer as `reference`; sampling is seeded so a
    rerun with the same settings writes the same file. Returns the number of rows written.
    """
    convs = read_prompts(data)
    if limit:
        convs = convs[:limit]
    prompts, refs = [], []
    for c in convs:
        msgs = c.messages
        if msgs and msgs[-1]["role"] == "assistant":
            refs.append(msgs[-1]["content"] or None)
            msgs = msgs[:-1]
        else:
            refs.append(None)
        prompts.append(msgs)
    torch.manual_seed(seed)
    preds: list[str] = []
    with Progress(TextColumn("[bold]generate"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  disable=not progress, transient=True) as bar:
        task = bar.add_task("generate", total=len(prompts))
        for i in range(0, len(prompts), batch_size):
            chunk = prompts[i:i + batch_size]
            if processor is not None:
                from tunelab.infer.vision import generate_vision

                pics = [[img.open() for img in c.images] for c in convs[i:i + batch_size]]
                preds += [a.text for a in generate_vision(model, processor, template, list(zip(chunk, pics)),
                                                          max_new_tokens, temperature, top_p)]
            else:
                preds += generate(model, tokenizer, template, chunk, max_new_tokens, temperature, top_p, batch_size)
            bar.advance(task, len(chunk))
    rows = [{"prompt": p[-1]["content"] if p else "", **({"images": [i.label for i in c.images]} if c.images else {}),
             "reference": r, "prediction": y, "settings": {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p, "seed": seed}}
            for c, p, r, y in zip(convs, prompts, refs, preds)]
    atomic_write_jsonl(out, rows)
    return len(rows)
