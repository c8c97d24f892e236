"""Load a RunCfg from YAML plus `key.path=value` overrides, reporting every problem at once."""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from tunelab.config.schema import RunCfg
from tunelab.utils.userfiles import UserFileError, load_yaml, read_text


class ConfigError(ValueError):
    """A config that cannot run; the message lists each problem with its key path and the fix."""

    def __init__(self, problems: list[str], source: str = "config"):
        self.problems = problems
        self.source = source
        n = len(problems)
        head = f"{n} problem{'s' if n != 1 else ''} in {source}"
        super().__init__(head + "\n" + "\n".join(f"  {p}" for p in problems))


_FUNCTION_LABEL = re.compile(r"^function-\w+\[.*, (\w+)\]$")

SHOWN_CHARS = 80
"""How much of a value an error message echoes: enough to recognise it, never a pasted file."""


def shorten(text: str, limit: int = SHOWN_CHARS) -> str:
    """`text` itself when short, else its first `limit` characters and how long it really is.

    Every value or override a ConfigError quotes goes through here, so a 60 KB override or a 300 KB path
    is named in one readable line instead of being echoed back whole.
    """
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text):,} characters)"


def show(value: Any) -> str:
    """A value as an error message quotes it: its repr, shortened."""
    return shorten(repr(value))


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `train.lr=1e-4` into (['train', 'lr'], 1e-4); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError([f"{show(text)}: an override must look like key.path=value (e.g. train.lr=1e-4)"],
                          "overrides")
    key, _, raw = text.partition("=")
    key = key.strip()
    control = next((c for c in text if ord(c) < 32 and c not in "\t\n\r"), None)
    if control is not None:
        raise ConfigError([f"{shorten(key)}: the override holds the control character U+{ord(control):04X}; "
                           "remove it"], "overrides")
    parts = [p.strip() for p in key.split(".")]
    if not all(parts):
        what = "the key is empty" if not key else f"the key {show(key)} has an empty part"
        raise ConfigError([f"{show(text)}: {what}; an override must look like key.path=value "
                           "(e.g. train.lr=1e-4)"], "overrides")
    try:
        value = load_yaml(raw, key) if raw.strip() else None
    except UserFileError as e:
        hint = f"e.g. '{shorten(key)}=\"{raw if len(raw) <= SHOWN_CHARS else '...'}\"'"
        raise ConfigError([f"{shorten(key)}: the value {show(raw)} is {shorten(str(e).partition(': ')[2])}; "
                           f"quote it to pass it as text, {hint}"], "overrides") from None
    return parts, value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Set each `key.path=value` in a nested dict (creating sections as needed)."""
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[path[-1]] = value
    return data


def _fields_at(path: tuple, model: type[BaseModel] = RunCfg, data: dict | None = None) -> list[str]:
    """The valid keys at a key path, following discriminated unions by the value given in `data`."""
    current: Any = model
    node = data or {}
    for part in path:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        field = current.model_fields.get(part)
        if field is None:
            return []
        current = _resolve_model(field.annotation, node.get(part) if isinstance(node, dict) else None)
        node = node.get(part, {}) if isinstance(node, dict) else {}
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _resolve_model(annotation: Any, value: Any) -> Any:
    """Pick the BaseModel an annotation means (for unions, the member whose `name` matches the value)."""
    import typing

    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Annotated:
        return _resolve_model(args[0], value)
    if args:
        members = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        if len(members) == 1:
            return members[0]
        if members and isinstance(value, dict):
            for m in members:
                default = m.model_fields.get("name")
                if default is not None and default.default == value.get("name"):
                    return m
        return members[0] if members else annotation
    return annotation


def format_errors(err: ValidationError, data: dict) -> list[str]:
    """Turn pydantic's errors into one line each: key path, bad value, what is allowed."""
    problems = []
    for e in err.errors():
        # A validated union member is labelled by its validator ("function-after[check_path_text(), str]"):
        # name it by the type it checks ("str"), as an unvalidated member reads.
        loc = tuple(_FUNCTION_LABEL.sub(r"\1", str(p)) for p in e["loc"])
        # Discriminated unions add the member tag to the path ("method.lora.r"); drop it.
        clean = tuple(p for i, p in enumerate(loc) if not (i > 0 and loc[i - 1] == "method" and p in _METHOD_TAGS))
        key = shorten(".".join(clean))
        kind = e["type"]
        if kind == "extra_forbidden":
            valid = _fields_at(clean[:-1], data=data)
            guess = suggest_key(clean[-1], valid)
            hint = f"did you mean {'.'.join(clean[:-1] + (guess,))}?" if guess else f"valid keys: {', '.join(valid)}"
            problems.append(f"{key}: unknown key; {hint}")
        elif kind == "missing":
            problems.append(f"{key}: required but missing")
        elif kind == "union_tag_not_found":
            problems.append(f"{key}.name: missing; say which method these options are for "
                            f"(one of {', '.join(_METHOD_TAGS)})")
        elif kind == "union_tag_invalid":
            problems.append(f"{key}.name: {show(e['input'].get('name'))} is not a method; choose from {', '.join(_METHOD_TAGS)}")
        else:
            got = e.get("input")
            problems.append(f"{key}: {shorten(e['msg'][0].lower() + e['msg'][1:], 300)} (got {show(got)})")
    return problems


_METHOD_TAGS: tuple[str, ...] = ()

# Names other tools use for our keys, so a config written for them gets pointed at ours.
KEY_SYNONYMS = {
    "learning_rate": "lr", "num_train_epochs": "epochs", "num_epochs": "epochs",
    "per_device_train_batch_size": "batch_size", "micro_batch_size": "batch_size",
    "gradient_accumulation_steps": "grad_accum", "gradient_accumulation": "grad_accum",
    "lr_scheduler_type": "scheduler", "lr_scheduler": "scheduler", "warmup": "warmup_ratio",
    "cutoff_len": "max_length", "max_seq_length": "max_length", "sequence_len": "max_length",
    "lora_rank": "r", "rank": "r", "lora_alpha": "alpha", "lora_dropout": "dropout",
    "lora_target": "target_modules", "output": "output_dir", "model_name_or_path": "name",
    "dataset": "train", "eval_steps": "eval_every", "save_steps": "save_every", "logging_steps": "log_every",
}


def suggest_key(bad: str, valid: list[str]) -> str | None:
    """The valid key a misspelt or foreign key most likely means, or None."""
    close = difflib.get_close_matches(bad, valid, n=1, cutoff=0.6)
    if close:
        return close[0]
    synonyms = {k: v for k, v in KEY_SYNONYMS.items() if v in valid}
    close = difflib.get_close_matches(bad, list(synonyms), n=1, cutoff=0.75)
    return synonyms[close[0]] if close else None


def _method_tags() -> tuple[str, ...]:
    import typing

    from tunelab.config.schema import MethodCfg

    union = typing.get_args(MethodCfg)[0]
    return tuple(m.model_fields["name"].default for m in typing.get_args(union))


_METHOD_TAGS = _method_tags()


def build_config(data: dict, source: str = "config") -> RunCfg:
    """Validate a plain dict into a RunCfg, raising one ConfigError naming every problem."""
    if not isinstance(data, dict):
        raise ConfigError([f"the top level must be a mapping of sections, got {type(data).__name__}"], source)
    try:
        return RunCfg.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_errors(err, data), source) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunCfg:
    """Read a YAML config (or start from defaults when path is None) and apply overrides."""
    data: dict = {}
    source = "overrides"
    if path is not None:
        p = Path(path)
        source = str(p)
        if not p.is_file():
            raise ConfigError([f"{p}: no such config file"], source)
        try:  # strict UTF-8; a key written twice or nesting past MAX_DEPTH is an error naming the line
            data = load_yaml(read_text(p), source) or {}
        except UserFileError as e:
            raise ConfigError([str(e)], source) from None
        except OSError as e:
            raise ConfigError([f"{p}: cannot read the config ({e.strerror})"], source) from None
    data = apply_overrides(data, overrides or [])
    return build_config(data, source)


def dump_config(cfg: RunCfg) -> str:
    """The resolved config as YAML, every default written out."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def schema_lines(model: type[BaseModel] = RunCfg, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """Every config key as (path, type, default, description), for --help and docs."""
    import typing

    rows = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        ann = field.annotation
        sub = _resolve_model(ann, None)
        args = typing.get_args(typing.get_args(ann)[0]) if typing.get_origin(ann) is typing.Annotated else typing.get_args(ann)
        union_members = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        if len(union_members) > 1:
            for m in union_members:
                tag = m.model_fields["name"].default
                rows.append((f"{path}.name", "str", tag, (m.__doc__ or "").strip().splitlines()[0]))
                rows += [r for r in schema_lines(m, f"{path}[{tag}].") if not r[0].endswith(".name")]
            continue
        if isinstance(sub, type) and issubclass(sub, BaseModel) and typing.get_origin(ann) not in (list, dict):
            rows += schema_lines(sub, path + ".")  # a section; a list of sections is one key (multihead.heads)
            continue
        default = "required" if field.is_required() else repr(field.get_default(call_default_factory=True))
        tname = type_name(ann)
        rows.append((path, tname, default, field.description or ""))
    return rows


def type_name(ann: Any) -> str:
    """A short human name for a field type: 'int', 'float | null', 'cosine|linear|constant'."""
    import typing

    origin = typing.get_origin(ann)
    if origin is typing.Annotated:  # a field kind (config.refs) or constraint: name the type it wraps
        return type_name(typing.get_args(ann)[0])
    if origin is typing.Literal:
        return "|".join(str(a) for a in typing.get_args(ann))
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " | ".join("null" if a is type(None) else type_name(a) for a in typing.get_args(ann))
    if origin is list:
        return f"list[{type_name(typing.get_args(ann)[0])}]"
    if origin is tuple:
        return f"tuple[{', '.join(type_name(a) for a in typing.get_args(ann))}]"
    return getattr(ann, "__name__", str(ann).replace("typing.", ""))
