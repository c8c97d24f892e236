"""Field kinds: which config values name a file, a folder, a model or code.

A config field that names something outside the config declares it in its type, e.g.

    eval: DataPath | None = Field(None, description="Validation file ...")
    rewards: list[CodeRef] = Field(...)

The kind travels in the schema (`Ref` metadata, shown as `"x-tunelab-ref"` in the JSON schema), so
code that must police such values (the studio keeps every path inside its folders and runs no user
code) asks `refs(cfg)` for them instead of keeping its own list of keys: a new field declared with a
kind is covered without touching that code, and a field holding a path without a kind is a bug in
the schema, not in the caller.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import AfterValidator, BaseModel

REF_SCHEMA_KEY = "x-tunelab-ref"
"""The JSON-schema key that carries a field's kind (`RunCfg.model_json_schema()`)."""

KINDS: dict[str, str] = {
    "data": "a data file or a datasets.save_to_disk folder that is read",
    "model": "a model: an alias, a local HF folder, a .gguf file, a cached hub id or a run folder",
    "run": "a tunelab run folder that is read",
    "template": "a named chat template or a path to a .jinja file",
    "checkpoint": "a checkpoint folder to resume from",
    "output": "a folder that is written",
    "code": "a Python function: builtin:NAME (shipped with tunelab) or file.py:function (runs that file)",
}
"""Every kind a field can declare, with what its value means."""

BUILTIN_PREFIX = "builtin:"

MAX_PATH_CHARS = 4096
"""The longest value a kind field takes: Linux's PATH_MAX; a longer one is a mistake, not a path."""


@dataclass(frozen=True)
class Ref:
    """Marks a `str` field (in `typing.Annotated`) as naming a file, folder, model or code; `kind` is a KINDS key."""

    kind: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown reference kind {self.kind!r}; one of {', '.join(KINDS)}")

    def __get_pydantic_json_schema__(self, core_schema: Any, handler: Any) -> dict:
        schema = handler(core_schema)
        schema[REF_SCHEMA_KEY] = self.kind
        return schema


def check_path_text(value: str) -> str:
    """Refuse a kind value no file system or loader can take: control characters (NUL above all) or a length
    past PATH_MAX. Runs on every kind, so each path field is checked where the config is validated, before
    `open()` would fail on it with `ValueError: embedded null byte` deep inside a run."""
    control = next((c for c in value if ord(c) < 32 or ord(c) == 127), None)
    if control is not None:
        raise ValueError(f"holds the control character U+{ord(control):04X}; a path cannot contain it, remove it")
    if len(value) > MAX_PATH_CHARS:
        raise ValueError(f"is {len(value):,} characters long; a path has at most {MAX_PATH_CHARS:,}")
    return value


_checked = AfterValidator(check_path_text)

DataPath = Annotated[str, Ref("data"), _checked]
ModelRef = Annotated[str, Ref("model"), _checked]
RunPath = Annotated[str, Ref("run"), _checked]
TemplateRef = Annotated[str, Ref("template"), _checked]
CheckpointPath = Annotated[str, Ref("checkpoint"), _checked]
OutputPath = Annotated[str, Ref("output"), _checked]
CodeRef = Annotated[str, Ref("code"), _checked]


def is_builtin(code: str) -> bool:
    """True for a `builtin:NAME` code reference (a registered function, not a file that would run)."""
    return code.startswith(BUILTIN_PREFIX)


class RefValue(NamedTuple):
    """One value of a validated config that names something: its key path, its kind and the value."""

    key: str
    kind: str
    value: str


def refs(cfg: BaseModel, prefix: str = "") -> Iterator[RefValue]:
    """Every value of a validated config whose field declares a kind, as (key, kind, value).

    Walks the schema generically (nested sections, unions, lists, dicts, Optional): keys read like
    the config's own (`data.train[0].eval`, `grpo.rewards[1]`, `method.tokenizer`). None values are
    skipped; a literal choice such as `train.resume: auto` is not a path and is skipped too.
    """
    for name, field in type(cfg).model_fields.items():
        yield from _walk(getattr(cfg, name), field.annotation, field.metadata, f"{prefix}{name}")


def _ref_of(metadata: typing.Iterable[Any]) -> Ref | None:
    return next((m for m in metadata if isinstance(m, Ref)), None)


def _walk(value: Any, ann: Any, metadata: typing.Iterable[Any], key: str) -> Iterator[RefValue]:
    if value is None:
        return
    ref = _ref_of(metadata)
    if ref is not None and isinstance(value, str):
        yield RefValue(key, ref.kind, value)
        return
    if isinstance(value, BaseModel):
        yield from refs(value, key + ".")
        return
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is Annotated:
        yield from _walk(value, args[0], (*args[1:], *metadata), key)
    elif origin in (typing.Union, types.UnionType):
        branch = _branch(value, args)
        if branch is not None:
            yield from _walk(value, branch, metadata, key)
    elif origin in (list, set, frozenset) or (origin is tuple and args[-1:] == (Ellipsis,)):
        for i, item in enumerate(value):
            yield from _walk(item, args[0] if args else Any, (), f"{key}[{i}]")
    elif origin is tuple:
        for i, (item, item_ann) in enumerate(zip(value, args)):
            yield from _walk(item, item_ann, (), f"{key}[{i}]")
    elif origin is dict:
        for k, item in value.items():
            yield from _walk(item, args[1] if len(args) > 1 else Any, (), f"{key}.{k}")


def _base(ann: Any) -> Any:
    """The runtime class an annotation checks (`Annotated[str, ...]` -> str, `list[X]` -> list)."""
    while typing.get_origin(ann) is Annotated:
        ann = typing.get_args(ann)[0]
    return typing.get_origin(ann) or ann


def _branch(value: Any, members: tuple) -> Any:
    """The union member a validated value came from: a literal it equals first, else the first matching type."""
    for m in members:
        if _base(m) is Literal and value in typing.get_args(m):
            return None
    for m in members:
        base = _base(m)
        if isinstance(base, type) and isinstance(value, base):
            return m
    return None


def ref_fields(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, str, type[BaseModel]]]:
    """Every field of a config class (and its nested sections and union members) that declares a kind.

    Yields (key, kind, section class); list items read `key[]`. Used to document the kinds and by tests
    that try an outside value in every such field.
    """
    for name, field in model.model_fields.items():
        yield from _fields(field.annotation, field.metadata, f"{prefix}{name}", model)


def _fields(ann: Any, metadata: typing.Iterable[Any], key: str, owner: type[BaseModel]):
    ref = _ref_of(metadata)
    if ref is not None:
        yield key, ref.kind, owner
        return
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        yield from ref_fields(ann, key + ".")
        return
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is Annotated:
        yield from _fields(args[0], (*args[1:], *metadata), key, owner)
    elif origin in (typing.Union, types.UnionType):
        seen = set()
        for m in args:
            for row in _fields(m, (), key, owner):
                if row[:2] not in seen:
                    seen.add(row[:2])
                    yield row
    elif origin in (list, set, frozenset, tuple):
        for a in {a for a in args if a is not Ellipsis}:
            yield from _fields(a, (), key + "[]", owner)
    elif origin is dict and len(args) > 1:
        yield from _fields(args[1], (), key + ".*", owner)
