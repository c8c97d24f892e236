"""Tokenized-data cache: the second run on unchanged data skips parsing and tokenization.

The key hashes everything the result depends on: the bytes of every data file, the tokenizer
(its full serialized vocabulary/merges/normalizer, or its vocab and special tokens), the chat
template text, and the data settings (lengths, packing, formats, columns, split, seed).
Change any of them and the data is tokenized again.

Stored under `cache_root()/tokenized/<key>/`: token arrays in `tokens.safetensors`, everything
else in `meta.json`. No pickle. The folder is written atomically, so a crash never leaves a
half-written entry that a later run would trust.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from tunelab.data.formats import Conversation
from tunelab.data.packing import PackedRow
from tunelab.data.templates import Tokenized

CACHE_VERSION = 2  # 2: records with an empty assistant answer are left out (entries of 1 still hold them)


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes, or of every file (name and bytes) under a folder."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in files:
        h.update(str(p.relative_to(path) if path.is_dir() else p.name).encode())
        with p.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def tokenizer_digest(tokenizer) -> str:
    """sha256 of what decides the tokenizer's output: its serialized fast tokenizer, else vocab + specials."""
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode())
    return h.hexdigest()


def cache_key(parts: dict[str, Any]) -> str:
    """Short hex key of JSON-serializable parts (sorted keys, so order does not matter)."""
    blob = json.dumps({"version": CACHE_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def tokenized_root() -> Path:
    """The folder holding every tokenized-data entry: `cache_root()/tokenized` (set TUNELAB_CACHE to move it)."""
    from tunelab.models.gguf import cache_root

    return cache_root() / "tokenized"


def cache_dir(key: str) -> Path:
    """Where the entry for `key` lives."""
    return tokenized_root() / key


def _flatten(prefix: str, samples: list[Tokenized]) -> dict[str, torch.Tensor]:
    lengths = [len(s.input_ids) for s in samples]
    segs = [getattr(s, "lengths", None) or [] for s in samples]
    return {
        f"{prefix}.input_ids": torch.tensor([t for s in samples for t in s.input_ids], dtype=torch.int64),
        f"{prefix}.labels": torch.tensor([t for s in samples for t in s.labels], dtype=torch.int64),
        f"{prefix}.lengths": torch.tensor(lengths, dtype=torch.int64),
        f"{prefix}.truncated": torch.tensor([s.truncated for s in samples], dtype=torch.uint8),
        f"{prefix}.segments": torch.tensor([n for seg in segs for n in seg], dtype=torch.int64),
        f"{prefix}.n_segments": torch.tensor([len(seg) for seg in segs], dtype=torch.int64),
    }


def _unflatten(prefix: str, t: dict[str, torch.Tensor]) -> list[Tokenized]:
    ids, labels = t[f"{prefix}.input_ids"].tolist(), t[f"{prefix}.labels"].tolist()
    lengths, truncated = t[f"{prefix}.lengths"].tolist(), t[f"{prefix}.truncated"].tolist()
    segs, n_segs = t[f"{prefix}.segments"].tolist(), t[f"{prefix}.n_segments"].tolist()
    out: list[Tokenized] = []
    a = b = 0
    for n, tr, k in zip(lengths, truncated, n_segs):
        if k:
            out.append(PackedRow(ids[a:a + n], labels[a:a + n], bool(tr), lengths=segs[b:b + k]))
        else:
            out.append(Tokenized(ids[a:a + n], labels[a:a + n], bool(tr)))
        a, b = a + n, b + k
    return out


def save_entry(key: str, splits: dict[str, list[Tokenized]], meta: dict) -> Path:
    """Write token arrays of each split and JSON metadata under the key's folder, atomically."""
    from safetensors.torch import save_file

    from tunelab.utils.io import atomic_dir

    tensors: dict[str, torch.Tensor] = {}
    for name, samples in splits.items():
        tensors.update(_flatten(name, samples))
    path = cache_dir(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(path) as tmp:
        save_file(tensors, str(Path(tmp) / "tokens.safetensors"))
        (Path(tmp) / "meta.json").write_text(json.dumps({**meta, "splits": list(splits)}, ensure_ascii=False),
                                             encoding="utf-8")
    return path


def load_entry(key: str) -> tuple[dict[str, list[Tokenized]], dict] | None:
    """(splits, metadata) stored under key, or None on a miss (or an unreadable entry)."""
    from safetensors.torch import load_file

    path = cache_dir(key)
    try:
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
        tensors = load_file(str(path / "tokens.safetensors"))
        return {name: _unflatten(name, tensors) for name in meta["splits"]}, meta
    except (OSError, ValueError, KeyError):
        return None


def conversations_to_json(convs: list[Conversation]) -> list[dict]:
    """Conversations as plain JSON objects (for the cache's metadata)."""
    return [{"messages": c.messages, "tools": c.tools, "meta": c.meta} for c in convs]


def conversations_from_json(rows: list[dict]) -> list[Conversation]:
    """Inverse of `conversations_to_json`."""
    return [Conversation(r["messages"], r.get("tools"), r.get("meta") or {}) for r in rows]
