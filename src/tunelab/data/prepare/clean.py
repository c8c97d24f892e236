"""Clean text fields and drop records that are empty, too short or too long.

Cleaning is a small pipeline of pure `str -> str` steps (`CLEAN_STEPS`), applied to every text
field of every format (see `text.text_fields`); labels, ids and other fields are left alone.
Dropped records are never lost: each becomes a rejected row with its reason and original position.
"""

from __future__ import annotations

import html
import re
import unicodedata
from functools import lru_cache, partial
from typing import Any, Callable, Sequence

from tunelab.data.prepare.result import PrepResult, RecordLike, positioned, rejected_row
from tunelab.data.prepare.text import TextField, map_text, text_fields

# Full-width CJK punctuation that NFKC would turn into ASCII ("，" -> ","); kept when asked to.
CJK_PUNCT = "，。：；！？（）【】《》、“”‘’～…—「」『』"
# Superscript and subscript digits/signs: NFKC maps "x²" to "x2" and "H₂O" to "H2O", which changes the meaning,
# so they are always kept.
SCRIPT_DIGITS = "⁰¹²³⁴⁵⁶⁷⁸⁹⁺⁻⁼⁽⁾ⁿ₀₁₂₃₄₅₆₇₈₉₊₋₌₍₎"
_PROTECT_BACK = re.compile(r"\x00(\d{3})\x00")


@lru_cache(maxsize=4)
def _protect_table(chars: str) -> dict[int, str]:
    return {ord(c): f"\x00{i:03d}\x00" for i, c in enumerate(chars)}


def normalize_unicode(text: str, form: str = "NFKC", keep_cjk_punct: bool = False) -> str:
    """Unicode normalization (NFKC by default: full-width letters/digits -> ASCII, ligatures split).

    Superscript and subscript digits are kept ("x²" stays "x²"). NFKC also maps full-width
    Chinese punctuation to ASCII ("，" -> ","); `keep_cjk_punct=True` keeps it, which matters when a
    model should keep writing Chinese punctuation.
    """
    keep = SCRIPT_DIGITS + (CJK_PUNCT if keep_cjk_punct else "")
    protected = text.replace("\x00", "").translate(_protect_table(keep))
    return _PROTECT_BACK.sub(lambda m: keep[int(m.group(1))], unicodedata.normalize(form, protected))


# Markdown code (fenced blocks, inline spans) is content: the html and whitespace steps leave it alone.
_CODE = re.compile(r"```.*?(?:```|\Z)|`[^`\n]+`", re.S)


def _outside_code(fn: Callable[[str], str], text: str) -> str:
    out, pos = [], 0
    for m in _CODE.finditer(text):
        out += [fn(text[pos:m.start()]), m.group()]
        pos = m.end()
    out.append(fn(text[pos:]))
    return "".join(out)


_HTML_DROP = re.compile(r"<!--.*?-->|<(script|style)\b[^>]*>.*?</\1\s*>", re.S | re.I)
_HTML_BREAK = re.compile(r"<br\s*/?>|</(?:p|div|li|tr|h[1-6]|blockquote|pre)\s*>", re.I)
_HTML_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9:-]*(?:\s[^<>]*)?/?>")


def strip_html(text: str) -> str:
    """Remove HTML remnants: comments, script/style blocks, tags (block ends become line breaks), entities.

    A tag must start with a letter right after '<', so "x < y" and "a <= b" survive, and Markdown
    code (```fenced``` or `inline`) is left as written. Turn this step off for data whose answers
    are raw HTML.
    """
    return _outside_code(_strip_html, text)


def _strip_html(text: str) -> str:
    text = _HTML_DROP.sub("", text)
    text = _HTML_BREAK.sub("\n", text)
    text = _HTML_TAG.sub("", text)
    return html.unescape(text)


_KEEP_FORMAT = {"\u200c", "\u200d"}  # zero-width (non-)joiners shape emoji and Indic/Persian text


def strip_control(text: str) -> str:
    """Remove control and invisible format characters (NUL, BEL, zero-width space, BOM...), keeping \\n and \\t."""
    text = re.sub(r"\r\n?|[\u2028\u2029\x85]", "\n", text)
    return "".join(c for c in text if c in "\n\t" or c in _KEEP_FORMAT
                   or unicodedata.category(c) not in ("Cc", "Cf", "Cs"))


_INNER_SPACES = re.compile(r"(?<=\S)[^\S\n]+")


def normalize_whitespace(text: str, keep_newlines: bool = True) -> str:
    """Collapse runs of spaces inside lines, drop trailing spaces, allow one blank line in a row, trim the ends.

    Indentation at the start of a line (nested lists, code) and Markdown code are kept as written.
    """
    if not keep_newlines:
        return re.sub(r"\s+", " ", text).strip()

    def tidy(part: str) -> str:
        lines = [_INNER_SPACES.sub(" ", line) for line in part.split("\n")]
        lines = [line.rstrip() for line in lines[:-1]] + lines[-1:]  # the last line may run on into code
        return re.sub(r"\n{3,}", "\n\n", "\n".join(lines))

    return _outside_code(tidy, text).strip()


CleanStep = Callable[[str], str]
CLEAN_STEPS: dict[str, CleanStep] = {
    "unicode": normalize_unicode,
    "html": strip_html,
    "control": strip_control,
    "whitespace": normalize_whitespace,
}
DEFAULT_STEPS = ("unicode", "html", "control", "whitespace")


def clean_text(text: str, steps: Sequence[str] = DEFAULT_STEPS, keep_cjk_punct: bool = False) -> str:
    """Apply cleaning steps (names from CLEAN_STEPS, in the canonical order) to one string."""
    unknown = [s for s in steps if s not in CLEAN_STEPS]
    if unknown:
        raise ValueError(f"unknown cleaning step(s) {unknown}; choose from {list(CLEAN_STEPS)}")
    for name in DEFAULT_STEPS:
        if name in steps:
            fn = partial(normalize_unicode, keep_cjk_punct=keep_cjk_punct) if name == "unicode" else CLEAN_STEPS[name]
            text = fn(text)
    return text


# Each check looks at a cleaned record and returns (reason, detail) when it must be dropped.
Check = Callable[[dict[str, Any], list[TextField], int, int | None], tuple[str, str] | None]


def _no_text(rec: dict, fields: list[TextField], lo: int, hi: int | None) -> tuple[str, str] | None:
    if not fields:
        return "no_text", "no text field (instruction/output, conversations, messages, text, prompt...)"
    return None


def _empty(rec: dict, fields: list[TextField], lo: int, hi: int | None) -> tuple[str, str] | None:
    if not any(f.text for f in fields):
        return "empty", "every text field is empty after cleaning"
    return None


def _empty_output(rec: dict, fields: list[TextField], lo: int, hi: int | None) -> tuple[str, str] | None:
    outs = [f for f in fields if f.side == "output"]
    if outs and not any(f.text for f in outs):
        return "empty_output", "the answer side (" + ", ".join(sorted({f.name for f in outs})) + ") is empty"
    return None


def _length(rec: dict, fields: list[TextField], lo: int, hi: int | None) -> tuple[str, str] | None:
    n = sum(len(f.text) for f in fields)
    if n < lo:
        return "too_short", f"{n} characters < min_chars={lo}"
    if hi is not None and n > hi:
        return "too_long", f"{n} characters > max_chars={hi}"
    return None


CHECKS: dict[str, Check] = {"no_text": _no_text, "empty": _empty, "empty_output": _empty_output, "length": _length}


def clean(records: Sequence[RecordLike], *, min_chars: int = 2, max_chars: int | None = None,
          steps: Sequence[str] = DEFAULT_STEPS, keep_cjk_punct: bool = False) -> PrepResult:
    """Clean every text field and drop records that are empty, too short or too long.

    Lengths are in characters, summed over all text fields of a record after cleaning.
    Returns kept (cleaned) records in input order, one rejected row per dropped record
    (reason, detail, original position and the original record), and counts: ``input``,
    ``kept``, ``modified`` (kept records whose text changed) and one count per drop reason.
    """
    if min_chars < 0 or (max_chars is not None and max_chars < min_chars):
        raise ValueError(f"need 0 <= min_chars <= max_chars (got min_chars={min_chars}, max_chars={max_chars})")
    result = PrepResult(kept=[])
    for i, (rec, where) in enumerate(positioned(records)):
        result.counts["input"] += 1
        cleaned = map_text(rec, lambda f: clean_text(f.text, steps, keep_cjk_punct))
        fields = text_fields(cleaned)
        verdict = next((v for check in CHECKS.values() if (v := check(cleaned, fields, min_chars, max_chars))), None)
        if verdict:
            result.counts[verdict[0]] += 1
            result.rejected.append(rejected_row(i, where, verdict[0], rec, verdict[1]))
            continue
        result.counts["kept"] += 1
        result.counts["modified"] += cleaned != rec
        result.kept.append(cleaned)
    return result
