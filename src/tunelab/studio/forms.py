"""The New-job form, generated from the typed config schema, and the studio's checks on a config.

`form_fields()` turns `tunelab.config.schema_lines()` into one field per key (type, default,
help text, choices, and for method options the method they belong to). `config_from_form()`
turns the submitted values back into the nested dict `tunelab train` reads, and
`check_config()` validates it with the CLI's own `build_config` (so errors read exactly as
the CLI prints them) plus the studio's rules: every value the schema declares a path
(tunelab.config.refs) inside the studio's folders, no remote code, built-in reward functions only.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from tunelab.config import ConfigError, RunCfg, build_config, schema_lines
from tunelab.config.refs import RefValue, is_builtin, refs
from tunelab.studio.paths import Settings, StudioError, inside
from tunelab.utils.userfiles import StrictLoader, yaml_problem

_METHOD_ROW = re.compile(r"^method\[(\w+)\]\.(.+)$")
_CHOICES = re.compile(r"^[\w\-]+(\|[\w\-]+)+$")
# Sections shown first and open; the rest start folded.
MAIN_SECTIONS = ("model", "data", "method", "stage", "train", "output_dir")


def _default_value(path: str, method: str | None) -> Any:
    data: dict = {"data": {"train": "x"}}
    if method:
        data["method"] = {"name": method}
    node: Any = build_config(data).model_dump(mode="json")
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _row_default(text: str, key: str, method: str | None) -> Any:
    """A key's default: the schema's literal (also inside sections that are off by default), else the built value."""
    import ast

    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return _default_value(key, method)
    return list(value) if isinstance(value, tuple) else value


def _text(value: Any) -> str:
    """A default as the YAML text a user would type (`null`, `3`, `[jsonl]`)."""
    if value is None:
        return ""
    return yaml.safe_dump(value, default_flow_style=True, allow_unicode=True).strip().removesuffix("\n...").strip()


def _kind(type_name: str) -> tuple[str, list[str]]:
    if type_name == "bool":
        return "bool", []
    if _CHOICES.match(type_name):
        return "choice", type_name.split("|")
    return "text", []


@lru_cache(maxsize=1)
def form_fields() -> list[dict]:
    """Every config key as a form field: {key, section, type, kind, choices, default, help, method, required}."""
    fields: list[dict] = []
    methods: list[str] = []
    for path, type_name, default, desc in schema_lines():
        m = _METHOD_ROW.match(path)
        method = m.group(1) if m else None
        if path == "method.name":
            methods.append(default)
            continue
        key = f"method.{m.group(2)}" if m else path
        kind, choices = _kind(type_name)
        value = None if default == "required" else _row_default(default, key, method)
        fields.append({"key": key, "section": key.split(".")[0], "type": type_name, "kind": kind, "choices": choices,
                       "default": value if kind == "bool" else _text(value), "help": desc, "method": method,
                       "required": default == "required"})
    method_help = RunCfg.model_fields["method"].description or "How the weights are trained."
    fields.insert(next(i for i, f in enumerate(fields) if f["section"] == "method"),
                  {"key": "method.name", "section": "method", "type": "|".join(methods), "kind": "choice",
                   "choices": methods, "default": "lora", "help": method_help, "method": None, "required": False})
    return fields


def _set(data: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value


def config_from_form(values: dict[str, Any]) -> dict:
    """Nested config dict from flat form values; text values are read as YAML (like KEY=VALUE overrides).

    Empty text means "use the default" and is left out, so the YAML holds only what was chosen.
    """
    data: dict = {}
    problems = []
    for key, raw in values.items():
        if isinstance(raw, str):
            if not raw.strip():
                continue
            try:  # the CLI's strict loader: duplicate keys and deep nesting are refused here too
                value = yaml.load(raw, Loader=StrictLoader)  # noqa: S506 - StrictLoader is a SafeLoader
            except yaml.YAMLError as e:
                problems.append(f"{key}: not a valid value ({yaml_problem(e)[1]}); write it as in YAML")
                continue
            except RecursionError:
                problems.append(f"{key}: not a valid value (nested too deeply); flatten it")
                continue
        else:
            value = raw
        _set(data, key, value)
    if problems:
        raise ConfigError(problems, "form")
    return data


KIND_WORDS = {"data": "data file", "model": "model", "run": "run folder", "template": "chat template",
              "checkpoint": "checkpoint", "output": "output_dir"}
"""How each kind reads in a message (a kind missing here reads 'path')."""


def kind_roots(settings: Settings) -> dict[str, list[Path]]:
    """The studio folders a value of each path kind (tunelab.config.refs.KINDS) may point into.

    A kind missing here (a new one added to the schema) is refused outright, so the studio fails
    closed until someone decides where such values may live.
    """
    return {
        "data": [settings.datasets],
        "model": [*settings.model_roots, settings.runs],
        "run": [settings.runs],
        "template": [settings.datasets, *settings.model_roots],
        "checkpoint": [settings.runs],
        "output": [settings.runs],
    }


def _is_named(kind: str, value: str) -> bool:
    """A value that names something shipped with tunelab rather than a path: a model alias or a named template."""
    if kind == "model":
        from tunelab.models import MODEL_ALIASES, TINY_MODELS  # the names resolve_model accepts
        from tunelab.models.tiny_vlm import TINY_VLMS

        return value in MODEL_ALIASES or value in TINY_MODELS or value in TINY_VLMS
    if kind == "template":
        from tunelab.data.templates import NAMED_TEMPLATES

        return value in NAMED_TEMPLATES
    return False


def ref_problem(ref: RefValue, settings: Settings) -> str | None:
    """The studio's rule for one value that names a file, folder, model or code; None when it is allowed.

    Code runs only when it is a built-in (`builtin:NAME` of a registered reward); every other kind is a path that
    must resolve (after `~` and symlinks) inside the folders kind_roots() gives that kind.
    """
    if ref.kind == "code":
        if is_builtin(ref.value):  # it must also name a registered reward (`builtin:../../evil` does not)
            from tunelab.training.rewards import reward_problem

            return reward_problem(ref.value, ref.key)
        return (f"{ref.key}: {ref.value}: the studio runs built-in reward functions only (builtin:...); "
                "run Python reward files with the CLI")
    if _is_named(ref.kind, ref.value):
        return None
    roots = kind_roots(settings).get(ref.kind)
    if roots is None:
        return (f"{ref.key}: the studio does not accept values of kind {ref.kind!r} ({ref.value!r}); "
                "set it with the CLI")
    path = Path(ref.value).expanduser()
    try:
        inside(path if path.is_absolute() else settings.data_dir / path, roots,
               KIND_WORDS.get(ref.kind, "path"), repr(ref.value))
    except StudioError as e:
        return f"{ref.key}: {e}"
    return None


def _model_problem(name: str, settings: Settings) -> str | None:
    return ref_problem(RefValue("model.name", "model", name), settings)


def studio_problems(cfg: RunCfg, settings: Settings) -> list[str]:
    """The studio's own rules on a valid config, one 'key: problem' line each.

    Every value whose schema field declares a path or code kind (tunelab.config.refs) is checked by
    ref_problem(), so a field added to the schema with a kind is covered here without a change.
    """
    problems = [p for ref in refs(cfg) if (p := ref_problem(ref, settings)) is not None]
    if cfg.model.trust_remote_code:
        problems.append("model.trust_remote_code: the studio never runs code shipped with a model; set it to false")
    if cfg.train.resume not in ("auto", "never"):
        problems.append("train.resume: the studio resumes with auto (the run's own last checkpoint) or never")
    return problems


def check_config(data: dict, settings: Settings, source: str = "form") -> RunCfg:
    """Validate like `tunelab train` does, then apply the studio's rules; raise one ConfigError with every problem."""
    cfg = build_config(data, source)
    problems = studio_problems(cfg, settings)
    if problems:
        raise ConfigError(problems, source)
    return cfg


def count_train_samples(cfg: RunCfg, settings: Settings) -> int | None:
    """Training records in the config's .json/.jsonl sources (read, not tokenized); None when unknown."""
    from tunelab.data.io import DataError, read_records

    total = 0
    for source in cfg.data.sources():
        file = settings.data_dir / source.path
        if file.suffix not in (".json", ".jsonl") or not file.is_file():
            return None
        try:
            total += len(read_records(file))
        except DataError:
            return None
    return total


def problems_by_field(err: ConfigError) -> dict[str, list[str]]:
    """ConfigError lines grouped by the form key they name (method.lora.r -> method.r); '' for the rest."""
    keys = {f["key"] for f in form_fields()}
    out: dict[str, list[str]] = {}
    for line in err.problems:
        head = line.split(":", 1)[0].strip()
        key = next((k for k in sorted(keys, key=len, reverse=True)
                    if head == k or head.startswith(k + ".") or head.startswith(k + "[")), "")
        if not key and head == "method":  # a method section without a valid name
            key = "method.name"
        out.setdefault(key, []).append(line)
    return out


def to_yaml(data: dict) -> str:
    """The YAML a job runs (only the keys that were set; everything else is the schema default)."""
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def cli_command(settings: Settings, config_rel: str | Path) -> str:
    """The shell command that reproduces the job from its YAML."""
    return f"cd {settings.data_dir} && tunelab train {config_rel}"
