"""The search space of a sweep: which config keys vary, and over what values (``space.yaml``).

Each top-level key of the file is a config key path, as in a ``key=value`` override; its value says how
the key is sampled::

    train.lr: {type: float, low: 1.0e-5, high: 1.0e-2, log: true}
    method.r: {type: int, low: 4, high: 32, step: 4}
    train.batch_size: [4, 8, 16]          # a list is shorthand for {type: categorical, choices: [...]}

Every bound and choice is checked against the run config's own schema before any trial starts, so a
typo in a key or a value the config rejects is reported once, naming the space file and the key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.config import ConfigError, build_config
from tunelab.config.loader import apply_overrides
from tunelab.utils.userfiles import UserFileError, load_yaml, read_text

KINDS = ("float", "int", "categorical")


class SpaceError(ValueError):
    """A search space that cannot be sampled; the message names the file, the key and the fix."""


@dataclass(frozen=True)
class Param:
    """One searched config key: its kind and range (float/int) or choices (categorical)."""

    key: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple | None = None

    def candidates(self) -> list:
        """Values the config must accept: the bounds, or every choice."""
        return list(self.choices) if self.kind == "categorical" else [self.low, self.high]

    def as_dict(self) -> dict:
        """The JSON form stored with the study (to tell a resumed sweep's space from a changed one)."""
        out = {"type": self.kind}
        if self.kind == "categorical":
            out["choices"] = list(self.choices)
        else:
            out.update(low=self.low, high=self.high, log=self.log)
            if self.step is not None:
                out["step"] = self.step
        return out


def _param(key: str, spec: Any, where: str) -> Param:
    if isinstance(spec, list):
        spec = {"type": "categorical", "choices": spec}
    if not isinstance(spec, dict):
        raise SpaceError(f"{where}: {key}: expected a mapping like {{type: float, low: 1e-5, high: 1e-3}} or a list "
                         f"of choices, got {spec!r}")
    spec = dict(spec)
    kind = spec.pop("type", "categorical" if "choices" in spec else None)
    if kind not in KINDS:
        raise SpaceError(f"{where}: {key}.type: must be one of {', '.join(KINDS)} (got {kind!r})")
    if kind == "categorical":
        choices = spec.pop("choices", None)
        if not isinstance(choices, list) or not choices:
            raise SpaceError(f"{where}: {key}.choices: give a non-empty list of values")
        if spec:
            raise SpaceError(f"{where}: {key}: unknown field(s) {sorted(spec)} for a categorical; use choices")
        return Param(key, kind, choices=tuple(choices))
    low, high, log, step = spec.pop("low", None), spec.pop("high", None), spec.pop("log", False), spec.pop("step", None)
    if spec:
        raise SpaceError(f"{where}: {key}: unknown field(s) {sorted(spec)}; a {kind} takes low, high, log, step")
    number = (int,) if kind == "int" else (int, float)
    for name, value in (("low", low), ("high", high)):
        if isinstance(value, bool) or not isinstance(value, number):
            raise SpaceError(f"{where}: {key}.{name}: must be {'an integer' if kind == 'int' else 'a number'} "
                             f"(got {value!r})")
    if not low < high:
        raise SpaceError(f"{where}: {key}: low must be below high (got low {low}, high {high})")
    if not isinstance(log, bool):
        raise SpaceError(f"{where}: {key}.log: must be true or false (got {log!r})")
    if log and low <= 0:
        raise SpaceError(f"{where}: {key}: a log-scale range needs low > 0 (got {low})")
    if step is not None and (log or isinstance(step, bool) or not isinstance(step, number) or step <= 0):
        raise SpaceError(f"{where}: {key}.step: must be a positive {'integer' if kind == 'int' else 'number'} "
                         "and cannot be combined with log: true")
    return Param(key, kind, float(low) if kind == "float" else low, float(high) if kind == "float" else high,
                 log, step)


def parse_space(data: Any, where: str = "space") -> dict[str, Param]:
    """Search space from its parsed YAML/dict form; raises SpaceError naming `where` and the key."""
    if not isinstance(data, dict) or not data:
        raise SpaceError(f"{where}: expected a mapping of config keys to ranges, e.g. "
                         "'train.lr: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}'")
    space = {str(k): _param(str(k), v, where) for k, v in data.items()}
    if "output_dir" in space:
        raise SpaceError(f"{where}: output_dir: the sweep sets each trial's folder itself; remove this key")
    return space


def load_space(path: str | Path) -> dict[str, Param]:
    """Read and check ``space.yaml`` (see the module docstring for its form)."""
    p = Path(path)
    if not p.is_file():
        raise SpaceError(f"{p}: no such space file; write one like 'train.lr: {{type: float, low: 1.0e-5, "
                         "high: 1.0e-3, log: true}'")
    try:
        data = load_yaml(read_text(p), str(p))
    except UserFileError as e:
        raise SpaceError(str(e)) from None
    return parse_space(data, str(p))


def as_overrides(params: dict[str, Any]) -> list[str]:
    """``key=value`` overrides for sampled values (JSON is YAML, so every value reads back as itself)."""
    return [f"{k}={json.dumps(v)}" for k, v in params.items()]


def check_space(space: dict[str, Param], base: dict, where: str) -> None:
    """Each bound and choice applied to the base config must give a valid config; one error lists all problems."""
    problems = []
    for p in space.values():
        for value in p.candidates():
            try:
                build_config(apply_overrides(json.loads(json.dumps(base)), as_overrides({p.key: value})))
            except ConfigError as e:
                problems.append(f"{p.key} = {value!r}: " + "; ".join(e.problems))
    if problems:
        raise SpaceError(f"{where}: {len(problems)} value(s) the run config rejects:\n  " + "\n  ".join(problems))


def suggest(trial, space: dict[str, Param]) -> dict[str, Any]:
    """Sample one value per key from an Optuna trial."""
    out = {}
    for p in space.values():
        if p.kind == "float":
            out[p.key] = trial.suggest_float(p.key, p.low, p.high, log=p.log, step=p.step)
        elif p.kind == "int":
            out[p.key] = trial.suggest_int(p.key, p.low, p.high, log=p.log, step=p.step or 1)
        else:
            out[p.key] = trial.suggest_categorical(p.key, list(p.choices))
    return out
