"""Dialogue from unformatted prose (novels), where speakers are not marked: quotes first, then who said them.

1. `find_quotes`: a rule-based finder for quoted speech, “…” 「…」 『…』 and straight "…", per paragraph,
   with the narration around each quote kept as context.
2. `rule_speaker`: the explicit attributions a reader needs no model for: a cast name with a speech
   verb right before the quote (``甄嬛笑道：“…”``, ``Anna said, "…"``) or right after it
   (``“…”皇帝说。``, ``"…," said Anna``).
3. `attribute`: the rest go to a model, which is shown the paragraph before and the paragraph with the
   quote marked, and picks a number from the cast list (or "none of them"). Any object with
   `choose(prompts, options) -> list[str | None]` works; `tunelab data extract-dialogue --prose
   --attribute-with MODEL_OR_URL` passes a local model (options scored by log-likelihood) or an
   OpenAI-compatible endpoint (tunelab.eval.judge.load_judge). Numbers, not names, are the options,
   so a long name is not less likely than a short one; each quote is asked with the cast in order
   and reversed, and kept only when both answers agree (a model guessing by list position abstains).
4. `to_script` writes the attributed quotes as ``名字：台词`` lines, so the script pipeline
   (tunelab.data.prepare.dialogue) makes the persona records; a chapter heading or a paragraph
   without speech between two quotes ends a scene.

`score_attribution` measures a result against hand labels: how many labelled quotes were found and
how many got the right speaker.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from tunelab.data.prepare.dialogue import is_scene_heading

QUOTE_PAIRS = (("“", "”"), ("「", "」"), ("『", "』"), ('"', '"'))
_QUOTE = re.compile("|".join(f"{re.escape(a)}([^{re.escape(a)}{re.escape(b)}]+){re.escape(b)}"
                             for a, b in QUOTE_PAIRS))
SPEECH_VERBS_ZH = ("说道", "笑道", "问道", "答道", "叹道", "喊道", "叫道", "冷笑道", "低声道", "轻声道", "说", "道",
                   "问", "答", "喊", "叫", "笑", "叹")
SPEECH_VERBS_EN = ("said", "asked", "replied", "answered", "shouted", "whispered", "cried", "called", "added",
                   "says", "asks", "replies")
NONE_OF_THEM = "none of them"

ATTRIBUTION_PROMPT = """Who speaks the quoted words marked with >> << in this passage from a story?

{before}{paragraph}

Speakers:
{cast}
Reply with the number of the speaker."""


class Chooser(Protocol):
    """A model that answers a prompt with one of a few options (tunelab.eval.judge.LocalJudge / EndpointJudge)."""

    def choose(self, prompts: Sequence[list[dict]], options: Sequence[str]) -> list[str | None]: ...


@dataclass
class Quote:
    """One quoted utterance: its text, where it is, its paragraph and who said it (None: not attributed yet)."""

    text: str
    paragraph: int
    start: int  # offset in the paragraph, of the opening mark
    end: int  # offset just past the closing mark
    speaker: str | None = None
    by: str = ""  # "rule" or "model"


def paragraphs(text: str) -> list[str]:
    """Non-empty lines (a novel's paragraphs), stripped."""
    return [p.strip() for p in text.splitlines() if p.strip()]


def find_quotes(text: str) -> tuple[list[str], list[Quote]]:
    """(paragraphs, every quote in reading order)."""
    paras = paragraphs(text)
    quotes = []
    for i, para in enumerate(paras):
        for m in _QUOTE.finditer(para):
            inner = next(g for g in m.groups() if g is not None).strip()
            if inner:
                quotes.append(Quote(inner, i, m.start(), m.end()))
    return paras, quotes


def _name_pattern(cast: Sequence[str]) -> str:
    return "|".join(map(re.escape, sorted(cast, key=len, reverse=True)))


def rule_speaker(para: str, quote: Quote, cast: Sequence[str]) -> str | None:
    """A cast name attached to the quote by a speech verb right before or right after it, else None."""
    if not cast:
        return None
    names = _name_pattern(cast)
    zh_verbs = "|".join(map(re.escape, SPEECH_VERBS_ZH))
    en_verbs = "|".join(SPEECH_VERBS_EN)
    before = para[max(0, quote.start - 40):quote.start]
    after = para[quote.end:quote.end + 40]
    patterns_before = [rf"({names})[^，。！？“”\"]{{0,6}}?(?:{zh_verbs})[：:，,]?\s*$",
                       rf"\b({names})\s+(?:{en_verbs})\b[^.!?\"]{{0,20}}?[,:]?\s*$"]
    patterns_after = [rf"^\s*[，,]?\s*({names})[^，。！？“”\"]{{0,6}}?(?:{zh_verbs})",
                      rf"^\s*,?\s*(?:(?:{en_verbs})\s+({names})\b|({names})\s+(?:{en_verbs})\b)"]
    for pattern in patterns_before:
        m = re.search(pattern, before, flags=re.I)
        if m:
            return next(g for g in m.groups() if g)
    for pattern in patterns_after:
        m = re.search(pattern, after, flags=re.I)
        if m:
            return next(g for g in m.groups() if g)
    return None


def attribution_prompt(paras: list[str], quote: Quote, cast: Sequence[str]) -> list[dict]:
    """The chat prompt asking who speaks `quote`: the previous paragraph, the quote's paragraph with the
    quote marked >> <<, and the numbered cast plus "none of them"."""
    para = paras[quote.paragraph]
    marked = para[:quote.start] + ">> " + para[quote.start:quote.end] + " <<" + para[quote.end:]
    before = paras[quote.paragraph - 1] + "\n" if quote.paragraph > 0 else ""
    listed = [*cast, NONE_OF_THEM]
    return [{"role": "user", "content": ATTRIBUTION_PROMPT.format(
        before=before, paragraph=marked, cast="\n".join(f"{i}. {n}" for i, n in enumerate(listed, 1)))}]


def attribute(text: str, cast: Sequence[str], chooser: Chooser | None = None,
              model_all: bool = False, swap: bool = True) -> tuple[list[str], list[Quote]]:
    """Find the quotes of `text` and attribute each to one of `cast` (or leave it None).

    Explicit attributions come from `rule_speaker`; the others (all of them with `model_all`) go to
    `chooser` when one is given. With `swap` (default) the model is asked twice, with the cast listed
    in order and reversed, and a speaker is kept only when both answers name the same one: a model
    that picks a list position rather than a person (small models pick "1") then leaves the quote
    unattributed instead of attributing it wrongly. Returns (paragraphs, quotes).
    """
    cast = [c.strip() for c in cast if c.strip()]
    if not cast:
        raise ValueError("--speakers: name the cast (comma-separated) so quotes can be attributed to them")
    paras, quotes = find_quotes(text)
    ask = []
    for q in quotes:
        q.speaker = None if model_all else rule_speaker(paras[q.paragraph], q, cast)
        if q.speaker:
            q.by = "rule"
        elif chooser is not None:
            ask.append(q)
    if ask:
        options = [str(i) for i in range(1, len(cast) + 2)]
        orders = [cast, cast[::-1]] if swap else [cast]
        answers = [[_name(pick, order) for pick in chooser.choose([attribution_prompt(paras, q, order) for q in ask],
                                                                   options)] for order in orders]
        for q, *names in zip(ask, *answers):
            if names[0] is not None and all(n == names[0] for n in names):
                q.speaker, q.by = names[0], "model"
    return paras, quotes


def _name(pick: str | None, cast: Sequence[str]) -> str | None:
    """The cast member a numbered answer names (None: "none of them" or no answer)."""
    return cast[int(pick) - 1] if pick is not None and int(pick) <= len(cast) else None


def to_script(paras: list[str], quotes: list[Quote]) -> str:
    """Attributed quotes as ``名字：台词`` lines; a chapter heading or a paragraph without quotes between two
    quotes starts a new scene (``# scene``), so no prompt crosses it. Unattributed quotes break the chain."""
    lines: list[str] = []
    with_quotes = {q.paragraph for q in quotes}
    last = None

    def cut() -> None:
        if lines and lines[-1] != "# scene":
            lines.append("# scene")

    for q in quotes:
        gap = range(last + 1, q.paragraph) if last is not None else range(0)
        if any(is_scene_heading(paras[i]) or i not in with_quotes for i in gap):
            cut()
        if q.speaker is None:
            cut()  # who answered whom is unknown here
        else:
            lines.append(f"{q.speaker}：{q.text}")
        last = q.paragraph
    return "\n".join(lines) + "\n"


def score_attribution(quotes: list[Quote], gold: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Against hand labels [{"text", "speaker"}] in reading order: quote recall (labelled quotes found, by
    text), attribution accuracy over the labelled quotes (a missed or unattributed quote counts wrong),
    precision over the attributed ones, and the rule/model split of the attributions."""
    found = {}
    for q in quotes:
        found.setdefault(q.text, q)
    hits = [found.get(g["text"]) for g in gold]
    right = sum(1 for g, q in zip(gold, hits) if q is not None and q.speaker == g["speaker"])
    attributed = [(g, q) for g, q in zip(gold, hits) if q is not None and q.speaker is not None]
    return {"n": len(gold), "quote_recall": sum(q is not None for q in hits) / len(gold),
            "accuracy": right / len(gold),
            "precision": (sum(q.speaker == g["speaker"] for g, q in attributed) / len(attributed))
            if attributed else float("nan"),
            "by_rule": sum(q.by == "rule" for _, q in attributed),
            "by_model": sum(q.by == "model" for _, q in attributed)}
