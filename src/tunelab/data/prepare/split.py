"""Seeded train/validation(/test) split, stratified by label for classification data.

A validation share of 15-20% is the usual advice for fine-tuning sets of a few thousand records:
smaller makes the validation loss noisy, larger starves training. Deduplicate first, or copies of
one record can land on both sides of the split.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from tunelab.data.io import DataError, write_records
from tunelab.data.prepare.result import RecordLike, positioned

PARTS = ("train", "val", "test")


@dataclass
class SplitResult:
    """Records per part (input order kept inside each part), their input indices, and what was stratified on."""

    parts: dict[str, list[dict[str, Any]]]
    indices: dict[str, list[int]]
    stratified_by: str | None = None
    label_counts: dict[str, Counter] = field(default_factory=dict)

    def write(self, out_dir: str | Path, suffix: str = ".jsonl") -> dict[str, Path]:
        """Write `train`, `val` and (when not empty) `test` files into `out_dir`, each atomically."""
        return {name: write_records(Path(out_dir) / f"{name}{suffix}", rows)
                for name, rows in self.parts.items() if rows or name != "test"}


def _label(rec: dict[str, Any], key: str, where: str) -> str:
    if key not in rec:
        raise DataError(f"{where}: field '{key}' is missing; every record needs it to stratify "
                        f"(pass stratify=None / --no-stratify to split without labels)")
    value = rec[key]
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, ensure_ascii=False)


def _half_up(x: float) -> int:
    return math.floor(x + 0.5)


def _take(idx: list[int], val: float, test: float) -> dict[str, list[int]]:
    n = len(idx)
    n_test = _half_up(n * test)
    n_val = min(_half_up(n * val), n - n_test)
    return {"test": idx[:n_test], "val": idx[n_test:n_test + n_val], "train": idx[n_test + n_val:]}


def split(records: Sequence[RecordLike], *, val: float = 0.15, test: float = 0.0, seed: int = 42,
          stratify: str | None = "auto") -> SplitResult:
    """Shuffle with `seed` and cut into train/val(/test) by fractions; same seed, same split.

    `stratify`: a field name to keep each label's share equal across parts (each class is cut
    separately, sizes rounded half up), ``"auto"`` to use ``label`` when every record has one, or
    None. Parts never overlap and together hold every record.
    """
    if not (0.0 <= val < 1.0 and 0.0 <= test < 1.0 and val + test < 1.0):
        raise ValueError(f"need 0 <= val, test and val + test < 1 (got val={val}, test={test})")
    rows = positioned(records)
    key = stratify
    if stratify == "auto":
        key = "label" if rows and all(isinstance(r.get("label"), (str, int, bool)) for r, _ in rows) else None
    groups: dict[str, list[int]] = defaultdict(list)
    for i, (rec, where) in enumerate(rows):
        groups[_label(rec, key, where) if key else ""].append(i)
    rng = random.Random(seed)
    indices: dict[str, list[int]] = {p: [] for p in PARTS}
    for label in sorted(groups):
        idx = groups[label][:]
        rng.shuffle(idx)
        for part, chosen in _take(idx, val, test).items():
            indices[part].extend(chosen)
    indices = {p: sorted(v) for p, v in indices.items()}
    parts = {p: [rows[i][0] for i in v] for p, v in indices.items()}
    label_counts = {p: Counter(_label(r, key, "") for r in v) for p, v in parts.items()} if key else {}
    return SplitResult(parts, indices, key, label_counts)
