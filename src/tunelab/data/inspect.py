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
    images: dict | None = None
    """Records with images: {"records", "images", "per_record": {count: records}, "width"/"height": [min, median,
    max], "image_tokens": [min, median, max] per sample (with a vision processor)}; None for text-only data."""

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
        if self.images:
            im = self.images
            lines.append(f"images: {im['images']} in {im['records']} records ("
                         + ", ".join(f"{k} per record: {v}" for k, v in sorted(im["per_record"].items())) + ")")
            lines.append(f"image sizes: width {'/'.join(map(str, im['width']))}, height "
                         f"{'/'.join(map(str, im['height']))} px (min/median/max)")
            if im.get("image_tokens"):
                lines.append(f"image tokens per sample: {'/'.join(map(str, im['image_tokens']))} (min/median/max; "
                             "never trained)")
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


def _image_token_ids(processor) -> set[int]:
    """Ids of the tokens a processor writes for images (its image token and the markup around it)."""
    added = processor.tokenizer.get_added_vocab()  # markup tokens the family added: <image>, <global-img>, ...
    ids = {i for t, i in added.items() if any(w in t for w in ("image", "img", "vision"))}
    if getattr(processor, "image_token_id", None) is not None:
        ids.add(processor.image_token_id)
    return ids


def _marked_vision_example(processor, template: str, conv: Conversation) -> list[tuple[str, bool]]:
    """Like _marked_example for a vision sample; each run of image tokens shows as one ⟨image: N tokens⟩."""
    from tunelab.data.vision import tokenize_vision

    t = tokenize_vision(processor, template, conv, NO_LIMIT)
    image_ids = _image_token_ids(processor)
    runs: list[tuple[list[int], str]] = []  # kind: "image", "trained", "prompt"
    for tok, label in zip(t.input_ids, t.labels):
        kind = "image" if tok in image_ids else "trained" if label != IGNORE_INDEX else "prompt"
        if runs and runs[-1][1] == kind:
            runs[-1][0].append(tok)
        else:
            runs.append(([tok], kind))
    dec = processor.tokenizer.decode
    return [(f"⟨image: {len(ids)} tokens⟩" if kind == "image" else dec(ids), kind == "trained") for ids, kind in runs]


def _image_stats(convs: list[Conversation]) -> dict | None:
    from tunelab.data.images import check_image

    with_images = [c for c in convs if c.images]
    if not with_images:
        return None
    sizes = [check_image(img, c.meta.get("where", "?"), k) for c in with_images for k, img in enumerate(c.images)]

    def spread(values: list[int]) -> list[int]:
        v = sorted(values)
        return [v[0], v[len(v) // 2], v[-1]]

    return {"records": len(with_images), "images": len(sizes),
            "per_record": dict(Counter(len(c.images) for c in with_images)),
            "width": spread([w for w, _ in sizes]), "height": spread([h for _, h in sizes])}


def inspect_data(path: str | Path, tokenizer=None, template: str | None = None, max_length: int = 1024,
                 fmt: str = "auto", columns: dict[str, str] | None = None, example_index: int = 0,
                 records: list[Record] | None = None, processor=None) -> InspectReport:
    """Inspect an SFT data file; with a tokenizer also token lengths, truncation and a marked example.

    Records with images add image counts and sizes; with a vision model's `processor` (instead of a
    tokenizer) samples are measured as the model sees them (images expanded to image tokens) and the
    example shows each image as a placeholder.

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
    images = _image_stats(convs)
    if processor is not None:
        from tunelab.data.vision import tokenize_vision

        template = template or processor.chat_template
        image_ids, counts = _image_token_ids(processor), []
        for c in convs:
            try:
                t = tokenize_vision(processor, template, c, NO_LIMIT)
            except (DataError, TemplateError) as e:
                invalid.append({"where": c.meta.get("where"), "error": str(e)})
                continue
            lengths.append(len(t.input_ids))
            targets.append(t.n_targets)
            counts.append(sum(i in image_ids for i in t.input_ids))
        if images and counts:
            v = sorted(counts)
            images["image_tokens"] = [v[0], v[len(v) // 2], v[-1]]
        if convs:
            example = _marked_vision_example(processor, template, convs[min(example_index, len(convs) - 1)])
    elif tokenizer is not None:
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
                         duplicates, labels, example, images)


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
