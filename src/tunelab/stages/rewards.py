"""Reward functions for GRPO: built-ins by name and your own from a Python file.

A reward function scores a batch of sampled completions, one float each:

    def my_reward(completions: list[str], answers: list[str], prompts: list[list[dict]]) -> list[float]

``answers`` are the reference answers of the prompts (the record's final assistant turn), repeated for
every completion of the same prompt. The config names functions as ``builtin:<name>`` (``BUILTIN_REWARDS``)
or ``path/to/file.py:function`` (path relative to the working directory). A file named in the config is run
as Python: name only files you wrote or trust.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable
from functools import partial
from pathlib import Path

from tunelab.stages.common import pick

RewardFn = Callable[[list[str], list[str], list[list[dict]]], list[float]]

BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def extract_answer(text: str) -> str:
    """The final answer in a text: the last ``\\boxed{...}`` content if there is one, else the stripped text."""
    found = BOXED.findall(text)
    return (found[-1] if found else text).strip()


def answer_match(completions: list[str], answers: list[str], prompts: list[list[dict]], **_) -> list[float]:
    """1.0 when the completion's final answer equals the reference's (``\\boxed{}`` contents if present), else 0."""
    return [float(extract_answer(c) == extract_answer(a)) for c, a in zip(completions, answers)]


def format_regex(completions: list[str], answers: list[str], prompts: list[list[dict]], pattern: str = "",
                 **_) -> list[float]:
    """1.0 when the completion contains a match of ``pattern`` (``grpo.format_regex``), else 0."""
    regex = re.compile(pattern)
    return [float(regex.search(c) is not None) for c in completions]


def length(completions: list[str], answers: list[str], prompts: list[list[dict]], target: int = 200,
           **_) -> list[float]:
    """1.0 up to ``target`` characters, falling linearly to 0 at ``2 * target`` (an overlong-answer penalty)."""
    return [max(0.0, min(1.0, 2.0 - len(c) / target)) for c in completions]


BUILTIN_REWARDS: dict[str, Callable[..., list[float]]] = {
    "answer_match": answer_match,
    "format_regex": format_regex,
    "length": length,
}


def reward_problem(spec: str, key: str = "grpo.rewards") -> str | None:
    """What is wrong with a reward reference, found without running anything; None when it can be loaded.

    ``builtin:NAME`` must name a BUILTIN_REWARDS entry (so ``builtin:../../evil`` is refused), and
    ``file.py:function`` an existing .py file. Used before a model is loaded, and by the studio.
    """
    kind, sep, name = spec.partition(":")
    if not sep or not name:
        return f"{key}: {spec!r} must look like builtin:answer_match or my_rewards.py:my_function"
    if kind == "builtin":
        if name not in BUILTIN_REWARDS:
            return f"{key}: unknown built-in reward {name!r}; choose one of: {', '.join(sorted(BUILTIN_REWARDS))}"
        return None
    path = Path(kind)
    if path.suffix != ".py" or not path.is_file():  # is_file() is False (not an error) for a name holding NUL
        return (f"{key}: {spec!r}: {path} is not an existing .py file (paths are relative to the working "
                f"directory {Path.cwd()})")
    return None


def load_rewards(specs: list[str], key: str, format_pattern: str = r"\\boxed\{.+?\}",
                 length_target: int = 200) -> dict[str, RewardFn]:
    """The reward functions of a config section ({logged name: function}); one ConfigError listing every
    reference that cannot be loaded, so a stage can call this before it loads the model and creates the run."""
    from tunelab.config import ConfigError

    problems = [p for i, spec in enumerate(specs) if (p := reward_problem(spec, f"{key}[{i}]")) is not None]
    if problems:
        raise ConfigError(problems)
    try:
        return {reward_name(spec): load_reward(spec, format_pattern, length_target, key) for spec in specs}
    except ValueError as e:  # a reward file without the named function
        raise ConfigError([str(e)]) from None


def load_reward(spec: str, format_pattern: str = r"\\boxed\{.+?\}", length_target: int = 200,
                key: str = "grpo.rewards") -> RewardFn:
    """The reward function named by ``spec`` (``builtin:name`` or ``file.py:function``), configured."""
    problem = reward_problem(spec, key)
    if problem is not None:
        raise ValueError(problem)
    kind, _, name = spec.partition(":")
    if kind == "builtin":
        fn = pick(BUILTIN_REWARDS, name, "built-in reward")
        return partial(fn, pattern=format_pattern, target=length_target)
    path = Path(kind)
    module_spec = importlib.util.spec_from_file_location(f"tunelab_user_rewards_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    fn = getattr(module, name, None)
    if not callable(fn):
        found = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
        raise ValueError(f"{key}: {path} has no function {name!r}; it defines {', '.join(found) or 'none'}")
    return fn


def reward_name(spec: str) -> str:
    """The short name a reward is logged under: the part after the colon."""
    return spec.partition(":")[2]


def score(fns: dict[str, RewardFn], completions: list[str], answers: list[str],
          prompts: list[list[dict]]) -> dict[str, list[float]]:
    """Each function's rewards, checked to be one finite number per completion."""
    out = {}
    for name, fn in fns.items():
        values = [float(v) for v in fn(completions, answers, prompts)]
        if len(values) != len(completions):
            raise ValueError(f"reward {name!r} returned {len(values)} values for {len(completions)} completions")
        out[name] = values
    return out
