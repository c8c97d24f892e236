"""The New-job form, generated from the typed config schema, and the studio's checks on a config.

`form_fields()` turns `tunelab.config.schema_lines()` into one field per key (type, default,
help text, choices, and for method options the method they belong to). `config_from_form()`
turns the submitted values back into the nested dict `tunelab train` reads, and
`check_config()` validates it with the CLI's own `build_config` (so errors read exactly as
the CLI prints them) plus the studio's rules: data and model paths inside the studio's
roots, no remote code, built-in reward functions only.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from tunelab.config import ConfigError, RunCfg, build_config, schema_lines
from tunelab.studio.paths import Settings, StudioError, inside

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
            try:
                value = yaml.safe_load(raw)
            except yaml.YAMLError as e:
                problems.append(f"{key}: not a valid value ({getattr(e, 'problem', e)}); write it as in YAML")
                continue
        else:
            value = raw
        _set(data, key, value)
    if problems:
        raise ConfigError(problems, "form")
    return data


def _paths(cfg: RunCfg) -> list[tuple[str, str]]:
    out = [("data.train", s.path) for s in cfg.data.sources()]
    out += [(f"data.train[{i}].eval", s.eval) for i, s in enumerate(cfg.data.sources()) if s.eval]
    if cfg.data.eval:
        out.append(("data.eval", cfg.data.eval))
    if getattr(cfg.optim, "ewc", None) is not None and cfg.optim.ewc.data:
        out.append(("optim.ewc.data", cfg.optim.ewc.data))
    return out


def _model_problem(name: str, settings: Settings) -> str | None:
    from tunelab.models import TINY_MODELS

    if name in TINY_MODELS or name in ("smollm2-135m", "smollm2-135m-instruct"):
        return None
    try:
        inside(settings.data_dir / name, settings.model_roots, "model", repr(name))
    except StudioError as e:
        return f"model.name: {e}"
    return None


def studio_problems(cfg: RunCfg, settings: Settings) -> list[str]:
    """The studio's own rules on a valid config, one 'key: problem' line each."""
    problems = []
    for key, path in _paths(cfg):
        try:
            inside(settings.data_dir / path, [settings.datasets], "data file", repr(path))
        except StudioError as e:
            problems.append(f"{key}: {e}")
    if (p := _model_problem(cfg.model.name, settings)) is not None:
        problems.append(p)
    if cfg.model.trust_remote_code:
        problems.append("model.trust_remote_code: the studio never runs code shipped with a model; set it to false")
    tpl = cfg.model.chat_template
    if tpl and (tpl.endswith(".jinja") or "/" in tpl):
        try:
            inside(settings.data_dir / tpl, [settings.datasets, *settings.model_roots], "chat template", repr(tpl))
        except StudioError as e:
            problems.append(f"model.chat_template: {e}")
    bad = [r for r in cfg.grpo.rewards if not r.startswith("builtin:")]
    if bad:
        problems.append(f"grpo.rewards: {', '.join(bad)}: the studio runs built-in reward functions only "
                        "(builtin:...); run Python reward files with the CLI")
    try:
        inside(settings.data_dir / cfg.output_dir, [settings.runs], "output_dir", repr(cfg.output_dir))
    except StudioError as e:
        problems.append(f"output_dir: {e}")
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
    for _, path in _paths(cfg)[:len(cfg.data.sources())]:
        file = settings.data_dir / path
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
        key = next((k for k in sorted(keys, key=len, reverse=True) if head == k or head.startswith(k + ".")), "")
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
