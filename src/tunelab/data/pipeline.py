"""From files to batches: read, map columns, parse, mix, split, tokenize (cached), pack, collate."""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tunelab.config.data import DataSource
from tunelab.config.schema import DataCfg
from tunelab.data import cache as tcache
from tunelab.data.formats import Conversation, parse_records
from tunelab.data.io import DataError, read_records
from tunelab.data.packing import pack, pack_stats, pad_rows
from tunelab.data.sources import map_columns, read_any
from tunelab.data.templates import (
    TemplateError,
    Tokenized,
    tokenize_conversation,
)
from tunelab.utils.io import atomic_write_jsonl
from tunelab.utils.userfiles import check_text_file

log = logging.getLogger("tunelab.data")


@dataclass
class PreparedData:
    """Tokenized train/validation samples and what was found on the way (shown to the user, saved in the run).

    With data.packing the samples are `PackedRow`s (several samples per row); collate them with
    `tunelab.data.packing.collate_packed`. A multi-task run (2+ sources in data.train) also has
    `val_sets`: each task's own validation samples by task name (`val` is their union).
    """

    train: list[Tokenized]
    val: list[Tokenized]
    val_conversations: list[Conversation]
    format: str
    stats: dict
    rejects: list[dict] = field(default_factory=list)
    val_sets: dict[str, list[Tokenized]] = field(default_factory=dict)


def split_train_val(items: list, val_size: float, seed: int) -> tuple[list, list]:
    """Seeded random split; at least one validation item when val_size > 0 and there are 2+ items."""
    if val_size <= 0 or len(items) < 2:
        return list(items), []
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_val = min(max(1, round(len(items) * val_size)), len(items) - 1)
    val_idx = set(order[:n_val])
    return [x for i, x in enumerate(items) if i not in val_idx], [x for i, x in enumerate(items) if i in val_idx]


def load_conversations(path: str, fmt: str = "auto", columns: dict[str, str] | None = None,
                       rejects: list[dict] | None = None, empty: list[dict] | None = None
                       ) -> tuple[list[Conversation], str]:
    """Read a data file (JSON/JSONL/CSV/TSV/Parquet/save_to_disk folder) and parse every record.

    `columns` renames the file's columns to standard names first; with `rejects` bad records are
    collected there instead of raising; with `empty`, records whose assistant answer is empty are
    moved there (see `tunelab.data.formats.empty_answer`).
    """
    records = read_any(path)
    if not records:
        raise DataError(f"{path}: no records (the file is empty); add data or point the config at another file")
    return parse_records(map_columns(records, columns), fmt, rejects, empty)


def check_data_files(cfg: DataCfg) -> None:
    """Refuse data files that cannot be read, before a model is loaded (minutes earlier than reading them would).

    Every file of the data section (data.train sources, their eval files, data.eval) must exist and not be
    empty; a text file must be UTF-8 throughout (read in pieces, so this is cheap even for large files), a
    .parquet file must carry Parquet's magic bytes, a .json/.jsonl file must parse (a streamed JSONL file is
    parsed as it is read). Each format's fields are checked when the stage reads the records.
    """
    paths = [p for s in cfg.sources() for p in (s.path, s.eval) if p] + ([cfg.eval] if cfg.eval else [])
    for p in dict.fromkeys(paths):
        path = Path(p)
        if path.is_dir():
            continue  # a save_to_disk folder: datasets checks it when it is read
        if not path.is_file():
            raise DataError(f"{path}: no such data file; check data.train / data.eval (relative paths start "
                            f"from {Path.cwd()})")
        if path.suffix.lower() == ".parquet":
            with open(path, "rb") as f:
                head = f.read(4)
                f.seek(max(0, path.stat().st_size - 4))
                tail = f.read(4)
            if head != b"PAR1" or tail != b"PAR1":
                raise DataError(f"{path}: not a Parquet file (no PAR1 magic bytes); write it again with pandas' "
                                "to_parquet or pyarrow, or use JSONL")
        elif not check_text_file(path, DataError):
            raise DataError(f"{path}: no records (the file is empty); add data or point the config at another file")
        elif path.suffix.lower() in (".json", ".jsonl") and not (cfg.streaming and path.suffix.lower() == ".jsonl"):
            read_records(path)  # JSON syntax, nesting and surrogates: a DataError naming the file and line, now


def mixture_counts(sizes: list[int], weights: list[float]) -> list[int]:
    """How many items to take from each source so shares follow `weights` without repeating any item.

    The mixture is as large as the scarcest source (relative to its share) allows: with 1,000 task
    and 10,000 general records at weights 0.8/0.2 it takes all 1,000 task and 250 general.
    """
    total_w = sum(weights)
    shares = [w / total_w for w in weights]
    total = min(n / p for n, p in zip(sizes, shares))
    return [min(n, round(total * p)) for n, p in zip(sizes, shares)]


@dataclass
class TaskSplit:
    """One task of a multi-task run: its source, and its training share and validation items (any item type)."""

    name: str
    source: DataSource
    train: list
    val: list


def split_tasks(cfg: DataCfg, load: Callable[[str, DataSource], list], seed: int) -> list[TaskSplit]:
    """Load every source of `data.train` as a task, give each its validation, then draw the mixture by weight.

    `load(path, source)` reads one file (the source's training file or its `eval:` file). A task's
    validation is its own `eval:` file, else data.val_size of its records held out (seeded). The
    training shares then follow the weights (`mixture_counts`) without repeats. Shared by every stage
    that accepts several tasks (sft, pretrain), whatever its item type.
    """
    tasks = []
    for i, src in enumerate(cfg.sources()):
        items = load(src.path, src)
        if not items:
            raise DataError(f"{src.path}: no valid records in data.train[{i}] (task {src.task_name()})")
        if src.eval:
            val = load(src.eval, src)
        else:
            items, val = split_train_val(items, cfg.val_size, seed)
        tasks.append(TaskSplit(src.task_name(), src, items, val))
    counts = mixture_counts([len(t.train) for t in tasks], [t.source.weight for t in tasks])
    rng = random.Random(seed)
    for task, n in zip(tasks, counts):
        if n < len(task.train):
            task.train = rng.sample(task.train, n)
    return tasks


def mix_tasks(tasks: list[TaskSplit], seed: int, max_items: int | None = None) -> list[tuple[str, object]]:
    """The training items of every task as (task name, item), shuffled together (seeded); at most `max_items`."""
    mixed = [(t.name, item) for t in tasks for item in t.train]
    random.Random(seed).shuffle(mixed)
    return mixed[:max_items] if max_items else mixed


def load_train(cfg: DataCfg, seed: int, rejects: list[dict] | None,
               empty: list[dict] | None = None) -> tuple[list[Conversation], str, dict]:
    """Training conversations of a single-task run (one file, or a one-source list); returns (conversations,
    format, per-source counts). Multi-task runs go through `split_tasks`, which also holds out each task's validation.
    """
    if isinstance(cfg.train, str):  # one file: exactly the records in file order
        convs, fmt = load_conversations(cfg.train, cfg.format, cfg.columns, rejects, empty)
        return convs, fmt, {cfg.train: len(convs)}
    src = cfg.train[0]
    convs, fmt = load_conversations(src.path, src.format or cfg.format, src.columns or cfg.columns, rejects, empty)
    if not convs:
        raise DataError(f"{src.path}: no valid records in this data.train source")
    mixed = list(convs)
    random.Random(seed).shuffle(mixed)  # a list's records are shuffled (seeded), as in a mixture
    return mixed, fmt, {src.path: len(convs)}


def _conversation_loader(cfg: DataCfg, rejects: list[dict] | None, formats: list[str], empty: list[dict]):
    def load(path: str, src: DataSource) -> list[Conversation]:
        convs, fmt = load_conversations(path, src.format or cfg.format, src.columns or cfg.columns, rejects, empty)
        formats.append(fmt)
        return convs
    return load


def tokenize_all(tokenizer, template: str, convs: list[Conversation], max_length: int,
                 rejects: list[dict] | None) -> list[Tokenized]:
    """Tokenize conversations; with `rejects`, ones that cannot be trained on are recorded and skipped."""
    out = []
    for c in convs:
        try:
            if c.images:  # a text-only model would train on the text and silently never see the images
                raise DataError(f"{c.meta.get('where', 'a record')}: the record has images but the model is text-only; "
                                "train a vision-language model (model.name: a LLaVA / Idefics3 / Qwen2-VL folder, see "
                                "docs/multimodal.md) or remove the images")
            out.append(tokenize_conversation(tokenizer, template, c, max_length))
        except (DataError, TemplateError) as e:
            if rejects is None:
                raise
            rejects.append({"where": c.meta.get("where", "?"), "error": str(e), "record": {"messages": c.messages}})
    return out


def _cache_parts(cfg: DataCfg, tokenizer, template: str, seed: int) -> dict:
    return {
        # the path is part of the key only so that messages and per-source counts name the right file
        "sources": [{"path": str(Path(s.path).resolve()), "digest": tcache.file_digest(s.path), "weight": s.weight,
                     "format": s.format, "columns": s.columns, "task": s.task_name(),
                     "eval": tcache.file_digest(s.eval) if s.eval else None} for s in cfg.sources()],
        "single": isinstance(cfg.train, str),
        "eval": tcache.file_digest(cfg.eval) if cfg.eval else None,
        "settings": cfg.model_dump(exclude={"train", "eval", "cache"}),
        "tokenizer": tcache.tokenizer_digest(tokenizer),
        "template": template,
        "seed": seed,
    }


def _all_exist(cfg: DataCfg) -> bool:
    return all(Path(p).exists() for s in cfg.sources() for p in (s.path, s.eval) if p)


def prepare_data(cfg: DataCfg, tokenizer, template: str, seed: int, run_dir: str | Path | None = None) -> PreparedData:
    """Everything the engine needs from the data section of the config.

    Reads from the tokenized cache when nothing it depends on changed (stats["cache"] says hit or
    miss). With data.skip_invalid, rejected records go to `run_dir/rejected.jsonl`.
    """
    key = None
    if cfg.cache and _all_exist(cfg) and (not cfg.eval or Path(cfg.eval).exists()):
        key = tcache.cache_key(_cache_parts(cfg, tokenizer, template, seed))
        hit = tcache.load_entry(key)
        if hit is not None:
            splits, meta = hit
            data = PreparedData(splits["train"], splits["val"], tcache.conversations_from_json(meta["val_conversations"]),
                                meta["format"], {**meta["stats"], "cache": "hit"}, meta.get("rejects", []),
                                {name: splits[f"val@{name}"] for name in meta.get("tasks", [])})
            _write_rejects(data, run_dir)
            _warn_empty(data)
            return data
    data = _prepare_fresh(cfg, tokenizer, template, seed)
    if key is not None:
        tcache.save_entry(key, {"train": data.train, "val": data.val,
                                **{f"val@{name}": v for name, v in data.val_sets.items()}},
                          {"format": data.format, "stats": data.stats, "rejects": data.rejects,
                           "tasks": list(data.val_sets),
                           "val_conversations": tcache.conversations_to_json(data.val_conversations)})
    data.stats["cache"] = "miss" if key is not None else "off"
    _write_rejects(data, run_dir)
    _warn_empty(data)
    return data


def split_conversations(cfg: DataCfg, seed: int, rejects: list[dict] | None = None, empty: list[dict] | None = None
                        ) -> tuple[list[Conversation], list[Conversation], str, dict]:
    """A single-task run's (train, validation) conversations, format and per-source counts, as training uses them.

    data.max_samples first, then data.eval (here or in the one source) or the seeded val_size split; anything
    that must rebuild a run's validation data (the studio's eval-against-base) calls this to get the same split.
    Records with an empty assistant answer are always left out (listed in `empty` when given).
    """
    empty = [] if empty is None else empty
    train_convs, fmt, per_source = load_train(cfg, seed, rejects, empty)
    if cfg.max_samples:
        train_convs = train_convs[: cfg.max_samples]
    eval_file = cfg.eval or cfg.sources()[0].eval  # a one-source list may name its eval file in the source
    if eval_file:
        val_convs, _ = load_conversations(eval_file, cfg.format, cfg.columns, rejects, empty)
    else:
        train_convs, val_convs = split_train_val(train_convs, cfg.val_size, seed)
    return train_convs, val_convs, fmt, per_source


def _prepare_fresh(cfg: DataCfg, tokenizer, template: str, seed: int) -> PreparedData:
    if len(cfg.tasks()) > 1:
        return _prepare_tasks(cfg, tokenizer, template, seed)
    rejects: list[dict] | None = [] if cfg.skip_invalid else None
    empty: list[dict] = []
    train_convs, val_convs, fmt, per_source = split_conversations(cfg, seed, rejects, empty)
    train = tokenize_all(tokenizer, template, train_convs, cfg.max_length, rejects)
    val = tokenize_all(tokenizer, template, val_convs, cfg.max_length, rejects)
    rejects = (rejects or []) + empty
    stats = _check_and_count(cfg, train, val, fmt, rejects, len(empty))
    if not isinstance(cfg.train, str):
        stats["sources"] = per_source
    if cfg.packing:
        packed_train, packed_val = pack(train, cfg.max_length), pack(val, cfg.max_length)
        stats["packing"] = pack_stats(train, packed_train, cfg.max_length)
        train, val = packed_train, packed_val
    return PreparedData(train, val, val_convs, fmt, stats, rejects)


def _prepare_tasks(cfg: DataCfg, tokenizer, template: str, seed: int) -> PreparedData:
    """A multi-task run: tasks split and mixed by `split_tasks`, each task's validation kept apart."""
    rejects: list[dict] | None = [] if cfg.skip_invalid else None
    formats: list[str] = []
    empty: list[dict] = []
    tasks = split_tasks(cfg, _conversation_loader(cfg, rejects, formats, empty), seed)
    mixed = mix_tasks(tasks, seed, cfg.max_samples)
    tagged = [(name, t) for name, c in mixed for t in tokenize_all(tokenizer, template, [c], cfg.max_length, rejects)]
    train = [t for _, t in tagged]
    val_sets = {task.name: tokenize_all(tokenizer, template, task.val, cfg.max_length, rejects) for task in tasks}
    val = [t for v in val_sets.values() for t in v]
    fmt = "+".join(dict.fromkeys(formats))
    rejects = (rejects or []) + empty
    stats = _check_and_count(cfg, train, val, fmt, rejects, len(empty))
    per_task = Counter(name for name, _ in tagged)
    stats["sources"] = {task.source.path: len(task.train) for task in tasks}
    stats["tasks"] = {task.name: {"path": task.source.path, "weight": task.source.weight,
                                  "eval": task.source.eval, "train_samples": per_task[task.name],
                                  "train_target_tokens": sum(t.n_targets for name, t in tagged if name == task.name),
                                  "val_samples": len(val_sets[task.name])} for task in tasks}
    if cfg.packing:
        packed = pack(train, cfg.max_length)
        stats["packing"] = pack_stats(train, packed, cfg.max_length)
        train = packed
        val_sets = {name: pack(v, cfg.max_length) for name, v in val_sets.items()}
        val = [t for v in val_sets.values() for t in v]
    return PreparedData(train, val, [c for task in tasks for c in task.val], fmt, stats, rejects, val_sets)


def _check_and_count(cfg: DataCfg, train: list[Tokenized], val: list[Tokenized], fmt: str,
                     rejects: list[dict] | None, empty_answers: int = 0) -> dict:
    """Refuse data with nothing to train on; otherwise the counts shown to the user and saved in the run."""
    if not train:
        why = f" ({len(rejects)} records rejected; see rejected.jsonl in the run folder)" if rejects else ""
        raise DataError(f"{cfg.train_label()}: no training samples left after filtering and the validation "
                        f"split{why}; check data.format/data.columns or add data")
    if not any(t.n_targets for t in train):
        raise DataError(f"{cfg.train_label()}: no trainable (assistant) tokens in the training data; check the "
                        "chat template and data.max_length")
    return {
        "format": fmt,
        "train_samples": len(train),
        "val_samples": len(val),
        "train_tokens": sum(len(t.input_ids) for t in train),
        "train_target_tokens": sum(t.n_targets for t in train),
        "truncated": sum(t.truncated for t in train + val),
        "rejected": len(rejects or []),
        "empty_answers": empty_answers,
    }


def _write_rejects(data: PreparedData, run_dir: str | Path | None) -> None:
    if data.rejects and run_dir is not None:
        from tunelab.runfolder import RunFolder

        path = RunFolder(run_dir).rejected_path
        atomic_write_jsonl(path, data.rejects)
        data.stats["rejected_file"] = str(path)


def _warn_empty(data: PreparedData) -> None:
    """Say how many records were left out for an empty assistant answer, and where they are listed."""
    n = data.stats.get("empty_answers", 0)
    if n:
        first = next(r["where"] for r in data.rejects if r.get("reason") == "empty_answer")
        listed = f"; listed in {data.stats['rejected_file']}" if "rejected_file" in data.stats else ""
        log.warning("warning: %d record%s with an empty assistant answer left out of training (first: %s)%s",
                    n, "s" if n != 1 else "", first, listed)


def collate(samples: list[Tokenized], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of samples into input_ids / attention_mask / labels tensors of shape (B, T).

    Packed rows are refused: padding them with a plain mask would let samples attend to each other.
    """
    if any(len(getattr(s, "lengths", None) or ()) > 1 for s in samples):
        raise DataError("packed rows reached a collator without packing support; this stage does not support "
                        "data.packing (set it to false), or collate with tunelab.data.packing.collate_packed")
    ids, labels, mask = pad_rows(samples, pad_id)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The sample order of one epoch: a permutation fixed by (seed, epoch), so resuming replays it exactly."""
    g = torch.Generator().manual_seed(seed * 1000 + epoch)
    return torch.randperm(n, generator=g).tolist()
