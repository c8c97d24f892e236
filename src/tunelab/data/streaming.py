"""`data.streaming: true`: SFT data read lazily from JSONL, so memory does not grow with the file.

Records are read one line at a time, shuffled through a seeded buffer of `data.shuffle_buffer`
records, then parsed and tokenized on the fly. Each epoch's order depends only on (seed, epoch),
so a position of (epoch, records consumed) is enough to resume exactly: the raw lines are replayed
through the same buffer and skipped without parsing or tokenizing.

When the buffer holds the whole file the order is the non-streaming path's `epoch_order`, so both
paths train on the same batches.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tunelab.config.loader import ConfigError
from tunelab.config.schema import DataCfg, RunCfg
from tunelab.data.formats import FORMATS, detect_format, parse_records
from tunelab.data.io import DataError, Record, parse_json_line
from tunelab.data.pipeline import epoch_order, load_conversations, tokenize_all
from tunelab.data.sources import map_columns
from tunelab.data.templates import Tokenized
from tunelab.utils.userfiles import decode_text

CONVERT_HINT = "convert it to JSONL first: tunelab data convert {path} {stem}.jsonl --to messages"


def check_streaming(cfg: RunCfg) -> None:
    """Refuse settings a stream cannot honour, before any model is loaded (ConfigError lists them all)."""
    data, train, problems = cfg.data, cfg.train, []
    if not train.max_steps:
        problems.append("train.max_steps: required with data.streaming (a stream has no length to count epochs "
                        "from); set e.g. train.max_steps: 1000")
    if not isinstance(data.train, str):
        problems.append("data.train: data.streaming reads one JSONL file; mix the sources into one file first")
    if data.packing:
        problems.append("data.packing: not supported with data.streaming; set one of them to false")
    if cfg.optim.ewc is not None and cfg.optim.ewc.lambda_:
        problems.append("optim.ewc: needs the training samples in memory; not supported with data.streaming")
    if data.eval and data.val_records:
        problems.append("data.val_records: set either data.eval or data.val_records, not both")
    if problems:
        raise ConfigError(problems)


def iter_jsonl(path: str | Path) -> Iterator[Record]:
    """Yield the records of a JSONL file one line at a time (never the whole file in memory).

    A JSON array cannot be read lazily here: it raises DataError telling how to convert it to JSONL.
    """
    from tunelab.data.registry import is_registry_ref

    if is_registry_ref(path):
        raise DataError(f"{path}: data.streaming reads a JSONL file, not a dataset registry entry; set "
                        "data.streaming: false (the entry is read whole) or point data.train at the entry's file")
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such data file (data.streaming reads a JSONL file)")
    hint = CONVERT_HINT.format(path=path, stem=path.with_suffix(""))
    if path.suffix.lower() not in (".jsonl", ".json"):
        raise DataError(f"{path}: data.streaming reads JSONL files only; {hint}")
    first, offset = True, 0
    with open(path, "rb") as f:  # bytes: each line is decoded strictly, so a bad byte names its line
        for lineno, raw in enumerate(f, start=1):
            line = decode_text(raw, str(path), DataError, first_line=lineno, offset=offset)
            offset += len(raw)
            if not line.strip():
                continue
            if first and line.lstrip().startswith("["):
                raise DataError(f"{path}: a JSON array cannot be streamed; {hint}")
            first = False
            obj = parse_json_line(line, path, lineno, f" (a JSON array cannot be streamed; {hint})")
            yield Record(obj, f"{path}:{lineno}")


def shuffle_buffer(items: Iterable, size: int, seed: int, epoch: int, peak: dict | None = None) -> Iterator:
    """Yield `items` in a seeded buffered-shuffle order holding at most `size` of them at once.

    While the buffer is full, each new item replaces a random slot whose item is yielded; at the end
    the rest is yielded in `epoch_order` (so a buffer larger than the input gives exactly the
    non-streaming order). `peak["buffer"]`, if given, records the most items held.
    """
    rng = random.Random(seed * 1000 + epoch)
    buf: list = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
        else:
            k = rng.randrange(size)
            out, buf[k] = buf[k], item
            yield out
        if peak is not None:
            peak["buffer"] = max(peak.get("buffer", 0), len(buf))
    for i in epoch_order(len(buf), seed, epoch):
        out, buf[i] = buf[i], None  # release each item as it goes
        yield out


@dataclass
class StreamingData:
    """What the SFT stage needs from a streamed data section (mirrors PreparedData's train/val/stats).

    `train` is empty: the samples come from `stream(batch_size, position)`, the factory `fit` takes.
    """

    stream: Callable[[int, dict], Iterator[tuple[int, list[Tokenized]]]]
    val: list[Tokenized]
    format: str
    stats: dict = field(default_factory=dict)
    train: list = field(default_factory=list)


class TrainStream:
    """Endless (micro_index, samples) micro-batches over epochs of a streamed file, resumable by position.

    Before yielding each micro-batch it stores `position["stream"] = {"epoch", "records"}` (records
    consumed from the shuffled stream this epoch), so a checkpoint of `position` resumes exactly.
    """

    def __init__(self, cfg: DataCfg, tokenizer, template: str, fmt: str, seed: int, stats: dict):
        self.cfg, self.tokenizer, self.template, self.fmt, self.seed = cfg, tokenizer, template, fmt, seed
        self.stats = stats
        self.peak: dict = {}  # the most records the shuffle buffer held (tests check it stays <= shuffle_buffer)

    def raw(self, epoch: int) -> Iterator[Record]:
        """One epoch of raw training records in shuffled order (no parsing or tokenizing yet)."""
        lines = itertools.islice(iter_jsonl(self.cfg.train), self.cfg.val_records, None)
        if self.cfg.max_samples:
            lines = itertools.islice(lines, self.cfg.max_samples)
        return shuffle_buffer(lines, self.cfg.shuffle_buffer, self.seed, epoch, self.peak)

    def sample(self, rec: Record) -> Tokenized | None:
        """Parse and tokenize one record; None when it is bad and data.skip_invalid is on, or its answer is empty."""
        rejects: list[dict] | None = [] if self.cfg.skip_invalid else None
        empty: list[dict] = []
        convs, _ = parse_records(map_columns([rec], self.cfg.columns), self.fmt, rejects, empty)
        out = tokenize_all(self.tokenizer, self.template, convs, self.cfg.max_length, rejects)
        if empty:  # counted, not listed: a stream keeps no list of its records
            self.stats["rejected"] = self.stats.get("rejected", 0) + 1
            self.stats["empty_answers"] = self.stats.get("empty_answers", 0) + 1
        if rejects:
            self.stats["rejected"] = self.stats.get("rejected", 0) + len(rejects)
        if out:
            self.stats["truncated"] = self.stats.get("truncated", 0) + out[0].truncated
        return out[0] if out else None

    def __call__(self, batch_size: int, position: dict) -> Iterator[tuple[int, list[Tokenized]]]:
        """Micro-batches of `batch_size` samples from the position saved in `position` (fresh: the start)."""
        start = position.get("stream") or {"epoch": 0, "records": 0}
        epoch, skip, index = start["epoch"], start["records"], position.get("micro_index", 0)
        while True:
            records = self.raw(epoch)
            consumed = sum(1 for _ in itertools.islice(records, skip))  # replayed, not tokenized
            batch: list[Tokenized] = []
            produced = skip > 0  # a resumed epoch already trained on something
            for rec in records:
                consumed += 1
                sample = self.sample(rec)
                if sample is None:
                    continue
                batch.append(sample)
                if len(batch) == batch_size:
                    position["stream"] = {"epoch": epoch, "records": consumed}
                    produced = True
                    yield index, batch
                    index, batch = index + 1, []
            epoch, skip = epoch + 1, 0
            if batch:  # the last, partial micro-batch of the epoch
                position["stream"] = {"epoch": epoch, "records": 0}
                produced = True
                yield index, batch
                index += 1
            elif not produced:
                raise DataError(f"{self.cfg.train}: no training samples in an epoch of the stream; check "
                                "data.val_records, data.format and data.columns")


def prepare_stream(cfg: DataCfg, tokenizer, template: str, seed: int) -> StreamingData:
    """Set up streaming SFT data: detect the format, build validation, return the lazy training stream.

    Validation is data.eval (read whole: keep it small) or the first data.val_records records of
    data.train, which the training stream then skips; with neither there is no validation.
    """
    first = next(itertools.islice(iter_jsonl(cfg.train), cfg.val_records, None), None)
    if first is None:
        raise DataError(f"{cfg.train}: no training records (the file has {cfg.val_records} or fewer records and "
                        f"data.val_records is {cfg.val_records})")
    fmt = cfg.format if cfg.format != "auto" else detect_format(map_columns([first], cfg.columns)[0])
    if fmt not in FORMATS:
        raise DataError(f"data.format: unknown format {fmt!r}; choose from auto, {', '.join(FORMATS)}")
    rejects: list[dict] | None = [] if cfg.skip_invalid else None
    empty: list[dict] = []
    if cfg.eval:
        val_convs, _ = load_conversations(cfg.eval, cfg.format, cfg.columns, rejects, empty)
    elif cfg.val_records:
        head = list(itertools.islice(iter_jsonl(cfg.train), cfg.val_records))
        val_convs, _ = parse_records(map_columns(head, cfg.columns), fmt, rejects, empty)
    else:
        val_convs = []
    val = tokenize_all(tokenizer, template, val_convs, cfg.max_length, rejects)
    stats = {"format": fmt, "streaming": True, "shuffle_buffer": cfg.shuffle_buffer, "val_samples": len(val),
             "rejected": len(rejects or []) + len(empty), "empty_answers": len(empty), "truncated": 0}
    return StreamingData(TrainStream(cfg, tokenizer, template, fmt, seed, stats), val, fmt, stats)

