"""Style checks of generated answers: repetition loops, unfinished answers, a persona's forms of address.

These score answers on their own, without a reference, so they apply to open chat (a persona, a
chat model) where BLEU against one reference says little:

- ``ngram_repetition``: rep-n of one answer (Welleck et al. 2019, "Neural Text Generation with
  Unlikelihood Training", Sec. 6): ``1 - distinct n-grams / n-grams``. 0 for an answer that never
  repeats an n-gram; a loop such as ``皇上皇上皇上...`` approaches 1. Units are words for
  space-separated scripts and single characters for CJK (each ideograph is a unit, as in Chinese
  BLEU), so the rate is comparable across tokenizers.
- ``marker_share``: the share of answers containing at least one of a set of marker strings, e.g. the
  forms of address a character uses (a cheap proxy for staying in character); given the prompts, only
  markers the prompt does not already contain count (echoing the question is not being in character).
- ``style_report``: both over a list of answers, plus the share that ended on their own (stop token
  before the token limit) when the caller knows it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# One CJK ideograph or kana; a run of letters/digits; or any other single non-space character (punctuation).
_UNIT = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[^\W_]+|[^\w\s]")

# The forms of address 甄嬛 uses in the drama (herself to the emperor, to other consorts, to servants, the
# emperor and the empress): the persona proxy of the Chat-嬛嬛 worked example.
HUANHUAN_MARKERS: tuple[str, ...] = ("臣妾", "嫔妾", "本宫", "皇上", "娘娘", "小主", "姐姐", "妹妹", "奴婢", "皇后")


def units(text: str) -> list[str]:
    """The units n-grams are counted over: CJK characters one by one, other words whole, punctuation alone."""
    return _UNIT.findall(text)


def ngram_repetition(text: str, n: int = 4) -> float:
    """rep-n of one text: ``1 - distinct n-grams / all n-grams`` over ``units``; 0 when it has fewer than n units."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    seq = units(text)
    grams = [tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def marker_share(answers: Sequence[str], markers: Sequence[str] = HUANHUAN_MARKERS,
                 prompts: Sequence[str] | None = None) -> float:
    """Share of answers that contain at least one marker string.

    With ``prompts`` (one per answer) a marker counts only when its prompt does not contain it, so an answer
    that echoes the question (``小主，皇上今晚...``) is not taken for one in character.
    """
    if not answers:
        return 0.0
    asked = prompts if prompts is not None else [""] * len(answers)
    if len(asked) != len(answers):
        raise ValueError(f"prompts has {len(asked)} entries for {len(answers)} answers")
    return sum(any(m in a and m not in q for m in markers) for a, q in zip(answers, asked)) / len(answers)


def style_report(answers: Sequence[str], finished: Sequence[bool] | None = None, n: int = 4,
                 markers: Sequence[str] = HUANHUAN_MARKERS, loop_threshold: float = 0.2,
                 prompts: Sequence[str] | None = None) -> dict[str, float]:
    """Mean rep-n, the share of answers above ``loop_threshold`` rep-n (loops), the marker share and,
    with ``finished`` (one bool per answer: it stopped on a stop token), the share that ended on their own.
    With ``prompts``, also ``own_marker_share``: markers the prompt does not contain (see ``marker_share``)."""
    if not answers:
        raise ValueError("style_report needs at least one answer")
    reps = [ngram_repetition(a, n) for a in answers]
    out = {f"rep{n}_mean": sum(reps) / len(reps), f"rep{n}_max": max(reps),
           "loops": sum(r > loop_threshold for r in reps) / len(reps),
           "marker_share": marker_share(answers, markers)}
    if prompts is not None:
        out["own_marker_share"] = marker_share(answers, markers, prompts)
    if finished is not None:
        if len(finished) != len(answers):
            raise ValueError(f"finished has {len(finished)} flags for {len(answers)} answers")
        out["ended_share"] = sum(map(bool, finished)) / len(finished)
    return out
