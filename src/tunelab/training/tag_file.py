"""Tagging with a token_classify run: words -> tags -> entities, for `tunelab generate` and the server.

Raw text is split into words as training split span records (`tunelab.data.tagging.split_words`), so each
predicted entity comes back with its character offsets in the text.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tunelab.data.io import DataError, read_records
from tunelab.data.tagging import load_tagging, split_words
from tunelab.eval.entities import entities, entity_metrics
from tunelab.training.tagging import TagModel, make_tag_samples, predict_tags
from tunelab.utils.io import atomic_write_jsonl


def tag_words(model: TagModel, tokenizer, sentences: list[list[str]], max_length: int = 512,
              batch_size: int = 8) -> list[list[str]]:
    """One tag per word for each sentence (a list of words)."""
    from tunelab.data.tagging import TagExample

    samples = make_tag_samples([TagExample(ws, ["O"] * len(ws)) for ws in sentences], model.labels, tokenizer,
                               max_length)
    device = next(model.parameters()).device
    return predict_tags(model, samples, tokenizer.pad_token_id, batch_size, device)


def tag_texts(model: TagModel, tokenizer, texts: list[str], max_length: int = 512, batch_size: int = 8) -> list[dict]:
    """Entities of each text: ``{"entities": [{"start", "end", "label", "text"}], "words", "tags"}``."""
    split = [split_words(t) for t in texts]
    tags = tag_words(model, tokenizer, [[w for w, _, _ in ws] for ws in split], max_length, batch_size)
    out = []
    for text, ws, ts in zip(texts, split, tags):
        ents = [{"start": ws[a][1], "end": ws[b][2], "label": kind, "text": text[ws[a][1]:ws[b][2]]}
                for kind, a, b in entities(ts)]
        out.append({"entities": ents, "words": [w for w, _, _ in ws], "tags": ts})
    return out


@torch.no_grad()
def tag_file(model: TagModel, tokenizer, data: str | Path, out: str | Path, max_length: int = 512,
             batch_size: int = 8, limit: int | None = None) -> tuple[int, dict | None]:
    """Tag every record of a file and write JSONL; (records, entity metrics when the file has reference tags).

    ``{"text"}`` records (spans, if present, are the reference) get entities with character offsets;
    ``{"tokens", "tags"?}`` records and CoNLL files get one tag per word.
    """
    data = Path(data)
    scheme = getattr(model, "scheme", "BIO")
    if data.suffix.lower() not in (".json", ".jsonl"):
        examples = load_tagging(data, scheme)[:limit]
        rows = [{"words": ex.words, "reference": ex.tags} for ex in examples]
    else:
        rows = []
        for rec in read_records(data)[:limit]:
            d = rec.data
            if isinstance(d.get("text"), str):
                row = {"text": d["text"]}
                if "spans" in d or "entities" in d:
                    row["reference"] = load_tagging_record(d, rec.where, scheme)
                rows.append(row)
            elif isinstance(d.get("tokens"), list):
                row = {"words": [str(w) for w in d["tokens"]]}
                if isinstance(d.get("tags"), list):
                    row["reference"] = list(d["tags"])
                rows.append(row)
            else:
                raise DataError(f"{rec.where}: a record to tag needs 'text' or 'tokens' (keys found: "
                                f"{sorted(d)[:8]})")
    texts = [i for i, r in enumerate(rows) if "text" in r]
    for i, result in zip(texts, tag_texts(model, tokenizer, [rows[i]["text"] for i in texts], max_length,
                                          batch_size)):
        rows[i].update(result)
    plain = [i for i, r in enumerate(rows) if "text" not in r]
    for i, tags in zip(plain, tag_words(model, tokenizer, [rows[i]["words"] for i in plain], max_length,
                                        batch_size)):
        rows[i]["tags"] = tags
    atomic_write_jsonl(out, rows)
    scored = [r for r in rows if "reference" in r]
    metrics = entity_metrics([r["reference"] for r in scored], [r["tags"] for r in scored]) if scored else None
    return len(rows), metrics


def load_tagging_record(d: dict, where: str, scheme: str) -> list[str]:
    """The reference tags of a span record (the words split as `split_words` does)."""
    from tunelab.data.tagging import parse_span_record

    return parse_span_record(d, where, scheme).tags
