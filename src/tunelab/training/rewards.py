"""Reward functions for GRPO and selftrain: built-ins by name and your own from a Python file.

A reward function scores a batch of sampled completions, one float each. Two signatures are accepted:

    def my_reward(completions: list[str], answers: list[str], prompts: list[list[dict]]) -> list[float]   # tunelab
    def my_reward(completions, **kwargs) -> list[float]                                                 # TRL

tunelab's is called positionally: ``answers`` are the reference answers of the prompts (the record's final
assistant turn), repeated for every completion of the same prompt. TRL's (GRPOTrainer's convention) is called
with keywords only: ``prompts``, ``completions``, ``completion_ids`` and every other column of the record
(``answer``, ``solution``...); as in TRL, records in a chat format (messages, sharegpt) give conversational
values (a completion is ``[{"role": "assistant", "content": text}]``, a prompt its messages) and other records
give strings. A TRL function that returns None for a completion (TRL's "no reward") scores 0 there.

The config names functions as ``builtin:<name>`` (``BUILTIN_REWARDS``) or ``path/to/file.py:function`` (path
relative to the working directory). A file named in the config is run as Python: name only files you wrote or
trust.
"""

from __future__ import annotations

import importlib.util
import inspect
import re
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from functools import partial
from pathlib import Path

from tunelab.training.common import pick

RewardFn = Callable[..., list[float]]
"""Called as ``fn(completions, answers, prompts, **context)``; context: ``completion_ids``, ``columns``,
``conversational`` (what a TRL-convention function needs; tunelab's own functions never receive it)."""

ACCEPTED_SIGNATURES = ("tunelab's f(completions, answers, prompts) or TRL's f(completions, **kwargs) (called with "
                       "keywords prompts, completions, completion_ids and the record's other columns, e.g. answer)")
TRL_KEYWORDS = ("prompts", "completions", "completion_ids")
_TRL_ONLY = {"completion_ids", "trainer_state", "log_extra", "log_metric", "environments"}

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
    convention = reward_convention(fn)
    if convention is None:
        raise ValueError(f"{key}: {spec}{_signature_text(fn)} fits neither accepted signature: {ACCEPTED_SIGNATURES}")
    return fn if convention == "tunelab" else TrlReward(fn, spec)


def _signature_text(fn) -> str:
    try:
        return str(inspect.signature(fn))
    except (TypeError, ValueError):
        return "(...)"


def reward_convention(fn) -> str | None:
    """How a reward function is called: ``"tunelab"`` (positionally: completions, answers, prompts), ``"trl"``
    (keywords: prompts, completions, completion_ids and the record's columns) or None when it fits neither.

    tunelab's when three positional arguments bind and none lands on a name only TRL passes (``completion_ids``,
    ``log_extra``...) or on ``prompts`` before the third place; TRL's when it takes ``**kwargs`` or names one of
    ``prompts``, ``completions``, ``completion_ids`` and needs nothing positionally.
    """
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # a C function without a signature: the caller's own convention
        return "tunelab"
    params = list(sig.parameters.values())
    try:
        bound = list(sig.bind(None, None, None).arguments)
    except TypeError:
        bound = None
    if bound is not None:
        kinds = {p.name: p.kind for p in params}
        named = [n for n in bound if kinds[n] is not inspect.Parameter.VAR_POSITIONAL]
        if not (set(named) & _TRL_ONLY or {"prompts", "completion_ids"} & set(named[:2])):
            return "tunelab"
    positional_only = any(p.kind is inspect.Parameter.POSITIONAL_ONLY and p.default is p.empty for p in params)
    takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    if not positional_only and (takes_kwargs or set(sig.parameters) & set(TRL_KEYWORDS)):
        return "trl"
    return None


class TrlReward:
    """A reward function in TRL's convention, called the way GRPOTrainer calls it (keywords only).

    Takes tunelab's call ``(completions, answers, prompts, completion_ids=, columns=, conversational=)`` and
    passes ``prompts``, ``completions``, ``completion_ids`` and each record column as keywords: all of them when
    the function takes ``**kwargs``, else the ones it names.
    """

    def __init__(self, fn, spec: str):
        self.fn, self.spec = fn, spec
        sig = inspect.signature(fn)
        self.takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())
        self.names = set(sig.parameters)
        self.required = [p.name for p in sig.parameters.values() if p.default is p.empty
                         and p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)]

    def missing(self, columns: dict) -> list[str]:
        """The parameters this function needs that neither TRL's keywords nor these record columns supply."""
        return [n for n in self.required if n not in TRL_KEYWORDS and n not in columns]

    def __call__(self, completions: list[str], answers: list[str], prompts: list[list[dict]], *,
                 completion_ids: list[list[int]] | None = None, columns: list[dict] | None = None,
                 conversational: bool = True) -> list[float]:
        columns = columns or [{} for _ in completions]
        missing = self.missing(columns[0] if columns else {})
        if missing:
            raise ValueError(f"reward {self.spec} needs {', '.join(missing)}, which is not a column of the records "
                             f"(they have: {', '.join(sorted(columns[0])) or 'none'}); add the column or rename the "
                             "parameter")
        if conversational:
            prompt_values = prompts
            completion_values = [[{"role": "assistant", "content": c}] for c in completions]
        else:
            prompt_values = [p[-1]["content"] for p in prompts]
            completion_values = list(completions)
        kwargs = {"prompts": prompt_values, "completions": completion_values,
                  "completion_ids": completion_ids if completion_ids is not None else [[] for _ in completions]}
        for name in columns[0] if columns else {}:
            kwargs.setdefault(name, [row.get(name) for row in columns])
        if not self.takes_all:
            kwargs = {k: v for k, v in kwargs.items() if k in self.names}
        return [0.0 if v is None else v for v in self.fn(**kwargs)]


def reward_name(spec: str) -> str:
    """The short name a reward is logged under: the part after the colon."""
    return spec.partition(":")[2]


def check_columns(fns: dict[str, RewardFn], columns: dict, key: str) -> None:
    """Refuse, before training, a TRL-convention reward that needs a column the records lack (one ConfigError)."""
    from tunelab.config import ConfigError

    problems = [f"{key}: {fn.spec} needs {', '.join(m)}, which is not a column of the records (they have: "
                f"{', '.join(sorted(columns)) or 'none'}); add the column or rename the parameter"
                for fn in fns.values() if isinstance(fn, TrlReward) and (m := fn.missing(columns))]
    if problems:
        raise ConfigError(problems)


def score(fns: dict[str, RewardFn], completions: list[str], answers: list[str],
          prompts: list[list[dict]], **context) -> dict[str, list[float]]:
    """Each function's rewards, checked to be one finite number per completion.

    ``context`` (``completion_ids``, ``columns``, ``conversational``) reaches TRL-convention functions only.
    """
    out = {}
    for name, fn in fns.items():
        raw = fn(completions, answers, prompts, **context) if isinstance(fn, TrlReward) else \
            fn(completions, answers, prompts)
        values = [float(v) for v in raw]
        if len(values) != len(completions):
            raise ValueError(f"reward {name!r} returned {len(values)} values for {len(completions)} completions")
        out[name] = values
    return out
