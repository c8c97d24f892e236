"""Look at a data file before training on it: format, counts, token lengths, truncation, duplicates, labels.

`inspect_data` returns an `InspectReport`; `report.to_text()` is what `tunelab data inspect`
prints, and `write_length_png` draws the token-length histogram (matplotlib, Agg backend,
no display needed). The example shows exactly which tokens are trained, marked ⟦like this⟧.
"""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tunelab.data.formats import Conversation, parse_records
from tunelab.data.io import DataError, Record
from tunelab.data.prepare.text import record_key
from tunelab.data.sources import map_columns, read_any
from tunelab.data.templates import (
    IGNORE_INDEX,
    TemplateError,
    resolve_template,
    tokenize_conversation,
)
from tunelab.utils.io import atomic_write_bytes

LABEL_KEYS = ("label", "labels", "category", "class", "kto_tag")
TRAINED_OPEN, TRAINED_CLOSE = "⟦", "⟧"
NO_LIMIT = 10**9


@dataclass
class InspectReport:
    """What `inspect_data` found in one file."""

    path: str
    format: str
    records: int
    invalid: list[dict]
    roles: dict[str, int]
    token_lengths: list[int]
    target_tokens: list[int]
    max_length: int
    duplicates: int
    labels: dict[str, int] | None
    example: list[tuple[str, bool]] = field(default_factory=list)

    @property
    def truncated(self) -> int:
        """Samples longer than max_length (training would truncate them)."""
        return sum(n > self.max_length for n in self.token_lengths)

    def histogram(self, bins: int = 10) -> list[tuple[int, int, int]]:
        """(low, high, count) buckets of token lengths, equal width, covering min..max."""
        import numpy as np

        if not self.token_lengths:
            return []
        counts, edges = np.histogram(self.token_lengths, bins=bins)
        return [(int(edges[i]), int(edges[i + 1]), int(c)) for i, c in enumerate(counts)]

    def example_text(self) -> str:
        """The rendered example with trained spans in ⟦ ⟧."""
        return "".join(f"{TRAINED_OPEN}{t}{TRAINED_CLOSE}" if trained else t for t, trained in self.example)

    def to_text(self) -> str:
        """A plain-text report (what the CLI prints)."""
        lens = sorted(self.token_lengths)
        lines = [
            f"file: {self.path}",
            f"format: {self.format}",
            f"records: {self.records} ({self.records - len(self.invalid)} valid, {len(self.invalid)} invalid)",
            "turns: " + ", ".join(f"{r} {n}" for r, n in sorted(self.roles.items())),
            f"exact duplicates: {self.duplicates}",
        ]
        if lens:
            lines += [
                (f"tokens per sample: min {lens[0]}, median {lens[len(lens) // 2]}, "
                 f"p95 {lens[min(len(lens) - 1, int(0.95 * len(lens)))]}, max {lens[-1]}"),
                f"trained tokens: {sum(self.target_tokens):,} of {sum(lens):,}",
                f"longer than max_length {self.max_length}: {self.truncated}",
                "token-length histogram:",
            ]
            buckets = self.histogram()
            peak = max(c for _, _, c in buckets) or 1
            lines += [f"  {lo:>6}-{hi:<6} {'#' * round(30 * c / peak):<30} {c}" for lo, hi, c in buckets]
        if self.labels:
            lines.append("labels: " + ", ".join(f"{k} {v}" for k, v in sorted(self.labels.items())))
        for bad in self.invalid[:5]:
            lines.append(f"invalid: {bad['error']}")
        if self.example:
            lines += [f"example (trained tokens in {TRAINED_OPEN} {TRAINED_CLOSE}):", self.example_text()]
        return "\n".join(lines)


def _marked_example(tokenizer, template: str, conv: Conversation) -> list[tuple[str, bool]]:
    """Decode a tokenized conversation into (text, trained) runs."""
    t = tokenize_conversation(tokenizer, template, conv, NO_LIMIT)
    runs: list[tuple[list[int], bool]] = []
    for tok, label in zip(t.input_ids, t.labels):
        trained = label != IGNORE_INDEX
        if runs and runs[-1][1] == trained:
            runs[-1][0].append(tok)
        else:
            runs.append(([tok], trained))
    return [(tokenizer.decode(ids), trained) for ids, trained in runs]


def inspect_data(path: str | Path, tokenizer=None, template: str | None = None, max_length: int = 1024,
                 fmt: str = "auto", columns: dict[str, str] | None = None, example_index: int = 0,
                 records: list[Record] | None = None) -> InspectReport:
    """Inspect an SFT data file; with a tokenizer also token lengths, truncation and a marked example.

    Bad records are counted in `invalid` (with position and reason) instead of stopping the look; so are
    records with an empty assistant answer. `records`, when the caller already read the file, skips reading it.
    """
    records = map_columns(read_any(path) if records is None else records, columns)
    if not records:
        raise DataError(f"{path}: no records (the file is empty)")
    invalid: list[dict] = []
    try:
        convs, found = parse_records(records, fmt, invalid, invalid)  # an empty answer is listed as invalid
    except DataError as e:  # not SFT data (e.g. preference pairs): still report counts, duplicates, labels
        convs, found = [], "unrecognized"
        invalid.append({"where": records[0].where, "error": str(e)})
    roles = Counter(m["role"] for c in convs for m in c.messages)
    duplicates = len(records) - len({record_key(r.data) for r in records})
    label_key = next((k for k in LABEL_KEYS if any(k in r.data for r in records)), None)
    labels = dict(Counter(str(r.data.get(label_key)) for r in records)) if label_key else None
    lengths, targets, example = [], [], []
    if tokenizer is not None:
        template = template or resolve_template(tokenizer, None)
        for c in convs:
            try:
                t = tokenize_conversation(tokenizer, template, c, NO_LIMIT)
            except (DataError, TemplateError) as e:
                invalid.append({"where": c.meta.get("where"), "error": str(e)})
                continue
            lengths.append(len(t.input_ids))
            targets.append(t.n_targets)
        if convs:
            example = _marked_example(tokenizer, template, convs[min(example_index, len(convs) - 1)])
    return InspectReport(str(path), found, len(records), invalid, dict(roles), lengths, targets, max_length,
                         duplicates, labels, example)


def write_length_png(report: InspectReport, png: str | Path) -> Path:
    """Draw the token-length histogram with the max_length line; written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not report.token_lengths:
        raise DataError(f"{report.path}: no token lengths to plot (inspect it with a tokenizer)")
    fig = Figure(figsize=(7, 3.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.hist(report.token_lengths, bins=30, color="#4c72b0")
    ax.axvline(report.max_length, color="#c44e52", linestyle="--", label=f"max_length {report.max_length}")
    ax.set_xlabel("tokens per sample")
    ax.set_ylabel("samples")
    ax.set_title(f"{Path(report.path).name}: {len(report.token_lengths)} samples, {report.truncated} truncated")
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return atomic_write_bytes(png, buf.getvalue())
