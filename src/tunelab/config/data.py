"""The `data:` section of a run config."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from tunelab.config.base import Section
from tunelab.config.refs import DataPath

RecordFormat = Literal["auto", "alpaca", "sharegpt", "messages", "vision"]
TASK_NAME = re.compile(r"^[\w.-]+$")
SEPARATOR = "#"  # registry.json#entry, as tunelab.data.registry reads it (config may not import data)
"""Task names appear in metric keys (`eval_loss/<task>`) and file names: letters, digits, `_`, `.`, `-`."""


class DataSource(Section):
    """One dataset in a mixture: `data.train: [{path: a.json, weight: 0.8}, {path: general.json, weight: 0.2}]`."""

    path: DataPath = Field(..., description="Data file (.json, .jsonl, .csv, .tsv, .parquet) or a datasets.save_to_disk "
                      "folder.")
    weight: float = Field(1.0, gt=0, description="Share of the training samples drawn from this source, relative "
                          "to the other sources' weights.")
    format: RecordFormat | None = Field(None, description="Record format of this source; null = data.format.")
    columns: dict[str, str] | None = Field(None, description="Column mapping for this source; null = data.columns.")
    task: str | None = Field(None, description="Task name for per-task metrics (eval_loss/<task>); null = the "
                             "file's stem (qa.jsonl -> qa).")
    eval: DataPath | None = Field(None, description="Validation file of this task; null = hold out data.val_size of "
                             "this source (or, when data.eval is set, no validation of its own).")

    def task_name(self) -> str:
        """The task this source trains: `task`, else the file name without its extension."""
        return self.task or Path(self.path).stem


class TemplateOptions(Section):
    """Reasoning-model settings written into the run's chat template, so training, chat and serve agree."""

    enable_thinking: bool | None = Field(
        None, description="Thinking mode of templates that have one (Qwen3's own, named qwen3 and deepseek): false "
        "= answers start with an empty <think></think> block (also added to training answers without one), true = "
        "the model thinks first; null = the template's default.")
    think_loss: Literal["keep", "mask"] = Field(
        "keep", description="keep = <think>...</think> content in the answers is trained on like the rest; mask = "
        "it is left out of the loss (the model learns the final answers only).")


class DataCfg(Section):
    train: DataPath | list[DataSource] = Field(
        ..., min_length=1, description="Training data: one file (JSON array, JSONL, CSV, TSV, Parquet or a datasets.save_to_disk "
        "folder), or a list of {path, weight, format} sources mixed by weight (e.g. 80% task / 20% general replay).")
    eval: DataPath | None = Field(None, description="Validation file; if null, val_size of train is held out.")
    registry: DataPath | None = Field(
        None, description="A LLaMA-Factory dataset registry (dataset_info.json). With it, data.train and data.eval "
        "(and a list's path / eval) name its entries: registry: data/dataset_info.json with train: alpaca_en_demo "
        "is data.train: data/dataset_info.json#alpaca_en_demo.")
    format: RecordFormat = Field(
        "auto", description="Record format; auto detects it from the first record and says what it found."
    )
    columns: dict[str, str] | None = Field(
        None, description="Rename columns before parsing, standard name -> your column, e.g. "
        "{instruction: question, output: answer} or {messages: dialog}.")
    val_size: float = Field(
        0.15, ge=0.0, lt=1.0, description="Fraction of train held out for validation when eval is null (0 = none)."
    )
    max_length: int = Field(1024, gt=8, description="Longest tokenized sample; longer ones are truncated, "
                            "keeping as much of the response as possible.")
    max_samples: int | None = Field(None, gt=0, description="Use at most this many training records.")
    packing: bool = Field(False, description="Pack several samples into each row of max_length tokens: no padding, "
                          "positions restart per sample and attention never crosses samples.")
    skip_invalid: bool = Field(False, description="Skip records that fail to parse or tokenize instead of stopping; "
                               "they are counted and written to rejected.jsonl in the run folder.")
    cache: bool = Field(True, description="Reuse tokenized data from the tunelab cache when the data, tokenizer, "
                        "template and lengths are unchanged.")
    streaming: bool = Field(False, description="Read a JSONL training file lazily (parsed and tokenized on the fly, "
                            "memory independent of file size) through a seeded shuffle buffer; needs train.max_steps.")
    shuffle_buffer: int = Field(10_000, gt=0, description="With streaming: records held in the shuffle buffer; "
                                "a buffer as large as the file gives the same order as data.streaming: false.")
    template_options: TemplateOptions = Field(default_factory=TemplateOptions, description="Chat-template "
                                              "options for reasoning models (thinking on/off, <think> in the loss).")
    val_records: int = Field(0, ge=0, description="With streaming and no data.eval: hold out the first N records "
                             "of data.train for validation (val_size is not used when streaming).")

    @model_validator(mode="before")
    @classmethod
    def _registry_entries(cls, data):
        """With data.registry, turn each entry name into `registry#name`, the one spelling the readers take."""
        if not isinstance(data, dict) or not _is_registry_file(data.get("registry")):
            return data  # no registry, or one _registry_is_json refuses once the fields are checked
        registry = data["registry"]
        out = dict(data)
        if isinstance(out.get("train"), str):
            out["train"] = _entry(registry, "data.train", out["train"])
        elif isinstance(out.get("train"), list):
            out["train"] = [_source_entry(registry, i, item) for i, item in enumerate(out["train"])]
        if isinstance(out.get("eval"), str):
            out["eval"] = _entry(registry, "data.eval", out["eval"])
        return out

    @field_validator("train", mode="before")
    @classmethod
    def _one_error_per_source(cls, value):
        """Validate list entries here so a typo reads `data.train[0].wieght: ...`, not a union of two branches."""
        if not isinstance(value, list):
            return value
        out = []
        for i, item in enumerate(value):
            if isinstance(item, str):
                item = {"path": item}
            try:
                out.append(DataSource.model_validate(item))
            except ValidationError as e:
                problems = "; ".join(
                    f"data.train[{i}].{'.'.join(map(str, err['loc']))}: "
                    + (f"unknown key; valid keys: {', '.join(DataSource.model_fields)}"
                       if err["type"] == "extra_forbidden" else err["msg"])
                    for err in e.errors())
                raise ValueError(problems) from None
        _check_task_names(out)
        return out

    @model_validator(mode="after")
    def _registry_is_json(self):
        if self.registry is not None and not _is_registry_file(self.registry):
            raise ValueError(f"data.registry: {self.registry!r} is not a dataset registry file; give the path of a "
                             "LLaMA-Factory dataset_info.json (ending in .json, no #name) and name its entries "
                             "in data.train / data.eval")
        return self

    @model_validator(mode="after")
    def _one_validation_per_task(self):
        """Several tasks are validated per task, so one shared data.eval file has no task to belong to."""
        if isinstance(self.train, list) and self.eval:
            if len(self.train) > 1:
                raise ValueError("data.eval: with several tasks each is validated on its own; move this file to "
                                 "data.train[i].eval of the task it belongs to, or set data.eval: null to hold out "
                                 "data.val_size of every task")
            if self.train[0].eval:
                raise ValueError("data.train[0].eval: data.eval is set too; keep one of them")
        return self

    def sources(self) -> list[DataSource]:
        """`train` as a list of sources (a single path is one source of weight 1)."""
        if isinstance(self.train, str):
            return [DataSource(path=self.train)]
        return list(self.train)

    def tasks(self) -> list[str]:
        """Task names of a multi-task run (one per source of a list); empty for a single training file."""
        return [] if isinstance(self.train, str) else [s.task_name() for s in self.train]

    def single_train(self, stage: str) -> str:
        """The one training file of a stage that reads one file; several sources are a clear error."""
        if isinstance(self.train, str):
            return self.train
        if len(self.train) == 1 and self.train[0].eval is None:
            return self.train[0].path
        raise ValueError(f"data.train: stage {stage} reads one training file, got {len(self.train)} sources; "
                         "multi-task runs are supported by stage sft and pretrain (or merge the files into one)")

    def train_label(self) -> str:
        """A short name of the training data for messages."""
        return self.train if isinstance(self.train, str) else " + ".join(s.path for s in self.train)


def _is_registry_file(value) -> bool:
    return isinstance(value, str) and value.endswith(".json") and SEPARATOR not in value


def _entry(registry: str, key: str, name: str) -> str:
    """`registry#name` for an entry name under data.registry; a value already spelt so (a stored config) is kept."""
    head, sep, entry = name.rpartition(SEPARATOR)
    if sep and head == registry and entry:
        return name
    if sep or not name.strip():
        raise ValueError(f"{key}: {name!r} is not an entry name; with data.registry set ({registry}), name an entry "
                         f"of it{f' (e.g. {entry!r})' if entry else ''}, or drop data.registry and give a file")
    return f"{registry}{SEPARATOR}{name}"


def _source_entry(registry: str, i: int, item):
    """A data.train[i] source under data.registry: its path and eval are entry names; the task defaults to the name."""
    if isinstance(item, str):
        item = {"path": item}
    if not isinstance(item, dict):
        return item
    item = dict(item)
    if isinstance(item.get("path"), str):
        if item.get("task") is None and SEPARATOR not in item["path"]:
            item["task"] = item["path"]
        item["path"] = _entry(registry, f"data.train[{i}].path", item["path"])
    if isinstance(item.get("eval"), str):
        item["eval"] = _entry(registry, f"data.train[{i}].eval", item["eval"])
    return item


def _check_task_names(sources: list[DataSource]) -> None:
    """Every source of a list is a task: names must be unique and fit in a metric key."""
    problems, seen = [], {}
    for i, src in enumerate(sources):
        name = src.task_name()
        if not TASK_NAME.match(name):
            problems.append(f"data.train[{i}].task: {name!r} can hold only letters, digits, '_', '.' and '-'; "
                            "set task: to a short name such as qa")
        elif name in seen:
            problems.append(f"data.train[{i}].task: {name!r} is already the task of data.train[{seen[name]}]; "
                            "give each source its own task: name")
        seen.setdefault(name, i)
    if problems:
        raise ValueError("; ".join(problems))
