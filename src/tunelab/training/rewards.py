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
from decimal import Decimal, InvalidOperation
from functools import partial
from pathlib import Path

from tunelab.training.common import pick

RewardFn = Callable[[list[str], list[str], list[list[dict]]], list[float]]

BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def extract_answer(text: str) -> str:
    """The final answer in a text: the last ``\\boxed{...}`` content if there is one, else the stripped text."""
    found = BOXED.findall(text)
    return (found[-1] if found else text).strip()


def answer_match(completions: list[str], answers: list[str], prompts: list[list[dict]], **_) -> list[float]:
    """1.0 when the completion's final answer equals the reference's (``\\boxed{}`` contents if present), else 0."""
    return [float(extract_answer(c) == extract_answer(a)) for c, a in zip(completions, answers)]


NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?")


def numbers(text: str) -> list[Decimal]:
    """The numbers in a text, in order, as exact decimals (``1,234`` and ``1234.0`` both read as 1234)."""
    out = []
    for found in NUMBER.findall(text):
        try:
            out.append(Decimal(found.rstrip(",").replace(",", "")))
        except InvalidOperation:  # digits and commas that do not form a number
            continue
    return out


def _answer_numbers(text: str) -> list[Decimal]:
    """The numbers of a text's answer: inside its last ``\\boxed{...}`` when it has one, else the whole text's."""
    return numbers(extract_answer(text) if BOXED.search(text) else text)


def _number_match(completions: list[str], answers: list[str], which: int) -> list[float]:
    out = []
    for c, a in zip(completions, answers):
        want, got = _answer_numbers(a), _answer_numbers(c)
        out.append(float(bool(want) and bool(got) and got[which] == want[0]))
    return out


def correct_number(completions: list[str], answers: list[str], prompts: list[list[dict]], **_) -> list[float]:
    """1.0 when the completion's *first* number is the reference's number, else 0: the answer must come first.

    For a reference ``55``: ``55``, ``55.`` and ``55, since ...`` score 1; ``18 + 37 = 55`` scores 0 (its first
    number is 18). Inside a ``\\boxed{...}`` only the boxed content counts. The reference's number is its first
    (``55``, ``\\boxed{55}``, ``The sum is 55.``); a reference without a number scores 0 for every completion.
    """
    return _number_match(completions, answers, 0)


def correct_final_number(completions: list[str], answers: list[str], prompts: list[list[dict]],
                         **_) -> list[float]:
    """1.0 when the completion's *last* number is the reference's number, else 0: work may come before it.

    For a reference ``55``: ``55`` and ``18 + 37 = 55`` score 1; ``55 is 18 + 37`` scores 0. The usual check
    for math answers (the final number, or the ``\\boxed{...}`` content) when the model may show its working.
    """
    return _number_match(completions, answers, -1)


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
    "correct_number": correct_number,
    "correct_final_number": correct_final_number,
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
