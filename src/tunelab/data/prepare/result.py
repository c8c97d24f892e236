"""What every preparation tool returns: the kept records, the rejected rows (never silently lost), counts."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from tunelab.data.io import Record, write_records
from tunelab.utils.io import atomic_write_jsonl

RecordLike = dict[str, Any] | Record


@dataclass
class PrepResult:
    """Kept records in input order, rejected rows (side-file rows), and counts per outcome.

    A rejected row reads ``{"position": "data.json[12]", "index": 12, "reason": "too_short",
    "detail": "...", "record": {...the original record...}}``; tools may add keys (dedup adds
    ``duplicate_of``, ``duplicate_of_index`` and ``similarity``).
    """

    kept: list[dict[str, Any]]
    rejected: list[dict[str, Any]] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)

    def write(self, out: str | Path, rejected: str | Path | None = None) -> tuple[Path, Path | None]:
        """Write kept records to `out` (.json or .jsonl) and rejected rows to `rejected` (JSONL), atomically."""
        kept_path = write_records(out, self.kept)
        rej_path = atomic_write_jsonl(rejected, self.rejected) if rejected is not None else None
        return kept_path, rej_path


def positioned(records: Sequence[RecordLike]) -> list[tuple[dict[str, Any], str]]:
    """Pair each record with a position: a `Record`'s 'file:line', else 'record[i]'."""
    out = []
    for i, r in enumerate(records):
        if isinstance(r, Record):
            out.append((r.data, r.where))
        elif isinstance(r, dict):
            out.append((r, f"record[{i}]"))
        else:
            raise TypeError(f"record[{i}]: expected a dict, got {type(r).__name__}")
    return out


def rejected_row(index: int, where: str, reason: str, record: dict[str, Any], detail: str = "",
                 **extra: Any) -> dict[str, Any]:
    """One side-file row: where the record was, why it was dropped, and the record itself."""
    row = {"position": where, "index": index, "reason": reason}
    if detail:
        row["detail"] = detail
    row.update(extra)
    row["record"] = record
    return row
