"""Turn a play or film script into Alpaca records for a persona model (the Chat-嬛嬛 recipe).

Every line of the target character becomes an ``output``; the line spoken just before it, by
someone else, is the ``instruction``; earlier exchanges of the same scene can go into ``history``.

What the parser understands:

- speaker lines ``名字：台词`` / ``NAME: line`` (full- or half-width colon), with an optional
  direction before the colon (``甄嬛（微笑）：…``);
- stage directions in （…） (…) […] 【…】, removed wherever they are; a line that is only a
  direction is skipped;
- scene headings (``第一幕``, ``第十一集``, ``SCENE 2``, ``ACT I``, ``INT. HOUSE - NIGHT``,
  ``场景：…``, ``# …``), which reset the context so no prompt crosses a scene;
- a line with no speaker directly under a speaker line continues it; after a blank line it is
  narration and is skipped;
- consecutive lines of one speaker are merged into one turn (so the target's two lines in a row
  make one answer).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

from tunelab.data.io import DataError
from tunelab.data.prepare.result import PrepResult, rejected_row
from tunelab.data.prepare.text import join_text

SCENE_PATTERNS: list[re.Pattern[str]] = [
    re.compile(r"^第\s*[0-9０-９一二三四五六七八九十百千零〇两]+\s*[幕场場集回章节節部](?:$|[\s（(\[【:：·.、\-—])"),
    re.compile(r"^(?:序幕|尾声|尾聲|楔子|终场|終場)\s*$"),
    re.compile(r"^(?:场景|場景|场次|地点|地點)\s*[:：]"),
    re.compile(r"^(?:scene|act)\s*(?:[0-9]+|[ivxlc]+\b|[:：.])", re.I),
    re.compile(r"^(?:INT|EXT|INT\.?/EXT|I/E)[.\s]"),
    re.compile(r"^#+\s"),
    re.compile(r"^[\[(（【]\s*(?:scene|场景|場景)\b", re.I),
]
_DIRECTION = re.compile(r"（[^（）]*）|\([^()]*\)|\[[^\[\]]*\]|【[^【】]*】")
_SPEAKER = re.compile(
    r"^(?P<name>[^\s:：（()\[\]【】0-9][^:：（()\[\]【】]{0,29}?)\s*"
    r"(?:(?:（[^（）]*）|\([^()]*\)|\[[^\[\]]*\]|【[^【】]*】)\s*)*[:：]\s*(?P<text>.*)$")
_NOT_IN_NAME = re.compile(r"[。，,！!？?；;\"“”…/]")


def strip_directions(text: str) -> str:
    """Remove stage directions in （…） (…) […] 【…】 (innermost first, so nested ones go too)."""
    prev = None
    while prev != text:
        prev, text = text, _DIRECTION.sub("", text)
    return re.sub(r"[^\S\n]{2,}", " ", text).strip()


def is_scene_heading(line: str) -> bool:
    """Whether a line starts a new scene (see SCENE_PATTERNS)."""
    return any(p.search(line) for p in SCENE_PATTERNS)


def parse_speaker(line: str) -> tuple[str, str] | None:
    """``(name, text)`` for a speaker line, else None. Names are at most 30 characters / 4 words."""
    m = _SPEAKER.match(line)
    if not m:
        return None
    name = m.group("name").strip()
    if _NOT_IN_NAME.search(name) or len(name.split()) > 4:
        return None
    return name, m.group("text")


def _norm_name(name: str) -> str:
    return re.sub(r"\s+", " ", name).strip().casefold()


@dataclass
class Turn:
    """One speaker's (merged) turn in a scene, with the script line it starts on."""

    speaker: str
    text: str
    lineno: int


def parse_script(text: str) -> Iterator[list[Turn]]:
    """Split a script into scenes, each a list of turns (consecutive lines of one speaker merged)."""
    scene: list[Turn] = []
    open_turn = False  # the previous line was dialogue, so an unprefixed line continues it
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            open_turn = False
            continue
        if is_scene_heading(line):
            if scene:
                yield scene
            scene, open_turn = [], False
            continue
        parsed = parse_speaker(line)
        if parsed is None:
            body = strip_directions(line)
            if body and open_turn and scene:
                scene[-1].text = join_text(scene[-1].text, body)
            continue
        name, said = parsed[0], strip_directions(parsed[1])
        open_turn = True
        if not said:
            continue
        if scene and _norm_name(scene[-1].speaker) == _norm_name(name):
            scene[-1].text = join_text(scene[-1].text, said)
        else:
            scene.append(Turn(name, said, lineno))
    if scene:
        yield scene


def _merge_target(scene: list[Turn], is_target) -> list[Turn]:
    """Merge adjacent turns that are all the target character (aliases count as one speaker)."""
    out: list[Turn] = []
    for t in scene:
        if out and is_target(t.speaker) and is_target(out[-1].speaker):
            out[-1].text = join_text(out[-1].text, t.text)
        else:
            out.append(Turn(t.speaker, t.text, t.lineno))
    return out


def extract_dialogue(text: str, character: str, *, aliases: Iterable[str] = (), history: int = 0,
                     system: str | None = None, source: str = "script") -> PrepResult:
    """Alpaca records from a script: the target's lines are outputs, the line before each is the instruction.

    `aliases` are other names of the same character; `history` keeps up to that many earlier
    [instruction, output] pairs of the same scene in ``history`` (0: no history field);
    `system` adds a fixed ``system`` prompt to every record. A target line that opens a scene
    has no prompt: it becomes a rejected row (reason ``no_prompt``) with its ``source:line``.
    Counts: ``lines``, ``scenes``, ``turns``, ``target_turns``, ``records``, ``no_prompt``.
    """
    if history < 0:
        raise ValueError(f"history must be >= 0 (got {history})")
    names = {_norm_name(n) for n in (character, *aliases) if n.strip()}
    if not names:
        raise ValueError("character name is empty")

    def is_target(name: str) -> bool:
        return _norm_name(name) in names

    result = PrepResult(kept=[])
    result.counts["lines"] = len(text.splitlines())
    speakers: Counter[str] = Counter()
    for scene in parse_script(text):
        result.counts["scenes"] += 1
        turns = _merge_target(scene, is_target)
        pairs: list[list[str]] = []
        for k, turn in enumerate(turns):
            speakers[turn.speaker] += 1
            result.counts["turns"] += 1
            if not is_target(turn.speaker):
                continue
            result.counts["target_turns"] += 1
            if k == 0:
                result.counts["no_prompt"] += 1
                result.rejected.append(rejected_row(len(result.rejected), f"{source}:{turn.lineno}", "no_prompt",
                                                    {"output": turn.text}, "opens the scene: no line before it"))
                continue
            rec: dict[str, Any] = {"instruction": turns[k - 1].text, "input": "", "output": turn.text}
            if system:
                rec["system"] = system
            if history:
                rec["history"] = [p[:] for p in pairs[-history:]]
            result.kept.append(rec)
            pairs.append([rec["instruction"], rec["output"]])
    result.counts["records"] = len(result.kept)
    if not result.counts["target_turns"]:
        common = ", ".join(f"{n} ({c})" for n, c in speakers.most_common(8)) or "none found"
        raise DataError(f"{source}: no line spoken by {character!r}"
                        f"{' or aliases ' + repr(list(aliases)) if aliases else ''}; "
                        f"speakers found (lines): {common}. Check --character/--alias spelling and that "
                        f"lines read 'NAME: text' or '名字：台词'")
    return result
