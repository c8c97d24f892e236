"""Turn a play or film script into Alpaca records for a persona model (the Chat-嬛嬛 recipe).

Every line of the target character becomes an ``output``; the line spoken just before it, by
someone else, is the ``instruction``; earlier exchanges of the same scene can go into ``history``.

What the parser understands:

- speaker lines ``名字：台词`` / ``NAME: line`` (full- or half-width colon), with an optional
  direction before the colon (``甄嬛（微笑）：…``);
- the typo ``名字；台词`` / ``NAME; line`` (full- or half-width semicolon in place of the colon) when
  the name is a known speaker (one that speaks with a colon somewhere in the scripts, or the
  character and its aliases); an unknown name before a semicolon is left as text and reported
  (``unknown_markers``) so another character's words do not slip into an answer unnoticed;
- stage directions in （…） (…) […] 【…】, removed wherever they are; a line that is only a
  direction is skipped;
- scene headings (``第一幕``, ``第十一集``, ``SCENE 2``, ``ACT I``, ``INT. HOUSE - NIGHT``,
  ``场景：…``, ``# …``), which reset the context so no prompt crosses a scene;
- a line with no speaker directly under a speaker line continues it; after a blank line it is
  narration and is skipped;
- consecutive lines of one speaker are merged into one turn (so the target's two lines in a row
  make one answer) by default; with ``merge=False`` every script line is its own turn and record
  (the layout of the published Chat-嬛嬛 set), its instruction the nearest earlier line of another
  speaker.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
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
# the colon typed as a semicolon: ``皇帝；快起来吧``
_SEMICOLON_SPEAKER = re.compile(
    r"^(?P<name>[^\s:：；;（()\[\]【】0-9][^:：；;（()\[\]【】]{0,29}?)\s*"
    r"(?:(?:（[^（）]*）|\([^()]*\)|\[[^\[\]]*\]|【[^【】]*】)\s*)*[；;]\s*(?P<text>.*)$")
MARKER_NAME_CHARS = 12  # a longer prefix before a semicolon is prose, not a speaker name: no warning


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


def parse_semicolon_speaker(line: str) -> tuple[str, str] | None:
    """``(name, text)`` for a line whose speaker marker is a semicolon (``名字；台词``, ``NAME; line``), else None.

    Only the shape is checked here; whether the name is a speaker is the caller's decision.
    """
    if parse_speaker(line) is not None:
        return None
    m = _SEMICOLON_SPEAKER.match(line)
    if not m:
        return None
    name = m.group("name").strip()
    if _NOT_IN_NAME.search(name) or len(name.split()) > 4 or len(name) > MARKER_NAME_CHARS:
        return None
    return name, m.group("text")


def _norm_name(name: str) -> str:
    return re.sub(r"\s+", " ", name).strip().casefold()


def speaker_names(texts: Iterable[str]) -> set[str]:
    """Normalized names that speak with a proper colon marker somewhere in `texts` (scene headings excluded)."""
    names = set()
    for text in texts:
        for raw in text.splitlines():
            line = raw.strip()
            if line and not is_scene_heading(line) and (parsed := parse_speaker(line)):
                names.add(_norm_name(parsed[0]))
    return names


@dataclass
class MarkerLog:
    """Semicolon speaker markers met while parsing: recognised ones and unknown names (``source:line: text``)."""

    recognised: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)


@dataclass
class Turn:
    """One speaker's (merged) turn in a scene, with the script line it starts on."""

    speaker: str
    text: str
    lineno: int


def parse_script(text: str, *, merge: bool = True, known: Iterable[str] | None = None, source: str = "script",
                 markers: MarkerLog | None = None) -> Iterator[list[Turn]]:
    """Split a script into scenes, each a list of turns.

    `merge` joins consecutive lines of one speaker into one turn; off, each speaker line is a turn.
    `known` names (default: the script's own colon speakers) make ``名字；台词`` a speaker line;
    such lines, and semicolon markers with an unknown name, are logged in `markers`.
    """
    known_names = {_norm_name(n) for n in known} if known is not None else speaker_names([text])
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
        if parsed is None and (typo := parse_semicolon_speaker(line)):
            if _norm_name(typo[0]) in known_names:
                parsed = typo
                if markers is not None:
                    markers.recognised.append(f"{source}:{lineno}: {line}")
            elif markers is not None:
                markers.unknown.append(f"{source}:{lineno}: {line}")
        if parsed is None:
            body = strip_directions(line)
            if body and open_turn and scene:
                scene[-1].text = join_text(scene[-1].text, body)
            continue
        name, said = parsed[0], strip_directions(parsed[1])
        open_turn = True
        if not said:
            continue
        if merge and scene and _norm_name(scene[-1].speaker) == _norm_name(name):
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


@dataclass
class DialogueResult(PrepResult):
    """A PrepResult plus the warnings worth showing: semicolon markers whose name is not a known speaker."""

    warnings: list[str] = field(default_factory=list)


def extract_dialogue(text: str, character: str, *, aliases: Iterable[str] = (), history: int = 0,
                     system: str | None = None, source: str = "script", merge: bool = True) -> DialogueResult:
    """Alpaca records from a script: the target's lines are outputs, the line before each is the instruction.

    `aliases` are other names of the same character; `history` keeps up to that many earlier
    [instruction, output] pairs of the same scene in ``history`` (0: no history field);
    `system` adds a fixed ``system`` prompt to every record; `merge` (default) joins consecutive
    lines of one speaker, off gives one record per target line (see the module notes). A target
    line that opens a scene has no prompt: it becomes a rejected row (reason ``no_prompt``) with
    its ``source:line``. Counts: ``lines``, ``scenes``, ``turns``, ``target_turns``, ``records``,
    ``no_prompt``, and ``semicolon_markers`` / ``unknown_markers`` when there are any.
    """
    return extract_dialogue_files([(source, text)], character, aliases=aliases, history=history, system=system,
                                  merge=merge)


def extract_dialogue_files(scripts: Sequence[tuple[str, str]], character: str, *, aliases: Iterable[str] = (),
                           history: int = 0, system: str | None = None, merge: bool = True) -> DialogueResult:
    """`extract_dialogue` over several scripts (``(source, text)`` pairs, e.g. one per episode), in order.

    Speakers known from any script make semicolon markers in every script count; no prompt or
    history crosses from one script into the next. It is an error only when no script has a
    line of the character. Counts add up over the scripts, plus ``files``.
    """
    if history < 0:
        raise ValueError(f"history must be >= 0 (got {history})")
    aliases = list(aliases)
    names = {_norm_name(n) for n in (character, *aliases) if n.strip()}
    if not names:
        raise ValueError("character name is empty")

    def is_target(name: str) -> bool:
        return _norm_name(name) in names

    known = speaker_names(text for _, text in scripts) | names
    result = DialogueResult(kept=[])
    markers = MarkerLog()
    speakers: Counter[str] = Counter()
    for source, text in scripts:
        result.counts["files"] += 1
        result.counts["lines"] += len(text.splitlines())
        for scene in parse_script(text, merge=merge, known=known, source=source, markers=markers):
            result.counts["scenes"] += 1
            turns = _merge_target(scene, is_target) if merge else scene
            _scene_records(turns, is_target, source, history, system, result, speakers)
    if markers.recognised:
        result.counts["semicolon_markers"] = len(markers.recognised)
    if markers.unknown:
        result.counts["unknown_markers"] = len(markers.unknown)
        result.warnings += [f"{where}: a ';' after an unknown name; kept as text. If it is a speaker, write "
                            f"'NAME：…' (or pass --alias for the character)" for where in markers.unknown]
    result.counts["records"] = len(result.kept)
    if not result.counts["target_turns"]:
        common = ", ".join(f"{n} ({c})" for n, c in speakers.most_common(8)) or "none found"
        where = scripts[0][0] if len(scripts) == 1 else f"{len(scripts)} scripts"
        raise DataError(f"{where}: no line spoken by {character!r}"
                        f"{' or aliases ' + repr(aliases) if aliases else ''}; "
                        f"speakers found (lines): {common}. Check --character/--alias spelling and that "
                        f"lines read 'NAME: text' or '名字：台词'")
    return result


def _scene_records(turns: list[Turn], is_target, source: str, history: int, system: str | None,
                   result: PrepResult, speakers: Counter[str]) -> None:
    """Append one scene's records to `result`: each target turn answers the nearest earlier non-target turn."""
    pairs: list[list[str]] = []
    prompt: Turn | None = None  # the latest line of someone else
    for turn in turns:
        speakers[turn.speaker] += 1
        result.counts["turns"] += 1
        if not is_target(turn.speaker):
            prompt = turn
            continue
        result.counts["target_turns"] += 1
        if prompt is None:
            result.counts["no_prompt"] += 1
            result.rejected.append(rejected_row(len(result.rejected), f"{source}:{turn.lineno}", "no_prompt",
                                                {"output": turn.text}, "opens the scene: no line before it"))
            continue
        rec: dict[str, Any] = {"instruction": prompt.text, "input": "", "output": turn.text}
        if system:
            rec["system"] = system
        if history:
            rec["history"] = [p[:] for p in pairs[-history:]]
        result.kept.append(rec)
        pairs.append([rec["instruction"], rec["output"]])
