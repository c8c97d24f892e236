"""Read files that users wrote (configs, data) so that every way they can be broken is one clear error.

Python's own readers fail on bad input with errors that name neither the file nor the fix:
`UnicodeDecodeError` for a Latin-1 or UTF-16 file, `RecursionError` for JSON or YAML nested
thousands of levels deep, a silent last-wins for a YAML key written twice, and strings holding
lone UTF-16 surrogates (JSON `"\\ud800"`) that only fail later, inside the tokenizer. The
functions here turn each of these into an exception of the caller's choosing (ConfigError,
DataError...) whose message names the file, the line and what to do.

    >>> text = read_text("data.jsonl", DataError)        # strict UTF-8, a BOM is dropped
    >>> value = load_yaml(read_text("run.yaml"), "run.yaml")  # UserFileError on duplicate keys, deep nesting
"""

from __future__ import annotations

import codecs
import json
import re
from pathlib import Path
from typing import Any

import yaml


class UserFileError(ValueError):
    """A user file that cannot be read as written (the default error of these functions)."""


MAX_DEPTH = 100
"""Deepest nesting of lists/objects accepted in a config or a data record (real ones stay under 10)."""

_BOMS = ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
         (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16"))
_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _reencode_hint(name: str, source: str) -> str:
    p = Path(name)
    return f"re-save it as UTF-8, e.g. iconv -f {source} -t utf-8 {name} > {p.with_name(p.stem + '.utf8' + p.suffix)}"


def decode_text(data: bytes, name: str, error: type[Exception] = UserFileError, first_line: int = 1,
                offset: int = 0) -> str:
    """Decode a user file's bytes as strict UTF-8 (a leading UTF-8 BOM is dropped).

    Anything else raises `error` naming the file, the line and the byte offset, and saying how to
    re-encode: UTF-16/32 (recognized by its byte-order mark), binary content (a NUL byte), or bytes
    that are not UTF-8 (typically Latin-1 or GB18030). `first_line`/`offset` place `data` inside a
    larger file when it is one line of it (streamed JSONL).
    """
    if offset == 0:
        for bom, enc in _BOMS:
            if data.startswith(bom):
                raise error(f"{name}: saved as {enc} (it starts with a byte-order mark); "
                            + _reencode_hint(name, enc.lower()))
        if data.startswith(codecs.BOM_UTF8):
            data, offset = data[3:], 3
    nul = data.find(b"\x00")
    if nul >= 0:
        line = first_line + data.count(b"\n", 0, nul)
        raise error(f"{name}:{line}: binary content (a NUL byte at byte offset {offset + nul}); expected UTF-8 text "
                    "(a UTF-16 file has these too: " + _reencode_hint(name, "utf-16") + ")")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = first_line + data.count(b"\n", 0, e.start)
        raise error(f"{name}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x} at byte offset {offset + e.start}); "
                    + _reencode_hint(name, "latin1")) from None


def read_text(path: str | Path, error: type[Exception] = UserFileError) -> str:
    """The text of a user file, decoded strictly as UTF-8 (see `decode_text`)."""
    return decode_text(Path(path).read_bytes(), str(path), error)


def check_text_file(path: str | Path, error: type[Exception] = UserFileError, chunk: int = 1 << 20) -> bool:
    """Check that a whole file is UTF-8 text (see `decode_text`) reading it in pieces, so memory stays flat
    however large it is; returns whether it holds anything but whitespace."""
    name, line, offset, pending, blank = str(path), 1, 0, b"", True
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            data = pending + block
            if not data:
                return not blank
            cut = len(data)
            if block:  # more may follow: hold back a character cut at the end of this piece
                k = len(data) - 1
                while k > len(data) - 4 and k > 0 and data[k] & 0xC0 == 0x80:
                    k -= 1
                if data[k] >= 0xC0:
                    cut = k
            part, pending = data[:cut], data[cut:]
            text = decode_text(part, name, error, first_line=line, offset=offset)
            blank = blank and not text.strip()
            line, offset = line + part.count(b"\n"), offset + len(part)
            if not block:
                return not blank


def check_value(value: Any, where: str, error: type[Exception] = UserFileError, surrogates: bool = True) -> None:
    """Refuse a parsed JSON/YAML value nested deeper than MAX_DEPTH or holding a lone surrogate in a string.

    Lone surrogates come from JSON escapes such as "\\ud800" without their pair; no encoder or tokenizer
    accepts them, so they are stopped here naming the field. The walk is iterative (no recursion limit).
    `surrogates=False` skips the string scan (when the source text holds no \\uD800-\\uDFFF escape).
    """
    if _clean(value, surrogates):
        return
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]  # something is wrong: walk again, naming the field
    while stack:
        node, path, depth = stack.pop()
        if isinstance(node, (dict, list)) and depth >= MAX_DEPTH:
            field = re.match(r"[^.\[]*", path).group()  # the top-level field: the full path is 100 steps long
            raise error(f"{where}: nested more than {MAX_DEPTH} levels deep{f' in field {field!r}' if field else ''}; "
                        "flatten the structure")
        if isinstance(node, dict):
            for k, v in node.items():
                if surrogates and isinstance(k, str) and _SURROGATE.search(k):
                    raise error(f"{where}: key {k!r} holds a lone UTF-16 surrogate escape; remove it or write "
                                "the character itself")
                stack.append((v, f"{path}.{k}" if path else str(k), depth + 1))
        elif isinstance(node, list):
            stack.extend((v, f"{path}[{i}]", depth + 1) for i, v in enumerate(node))
        elif surrogates and isinstance(node, str) and _SURROGATE.search(node):
            field = f"field '{path}'" if path else "the value"
            raise error(f"{where}: {field} holds a lone UTF-16 surrogate escape such as \\ud800 (half of a "
                        "character); remove it or write the whole character (e.g. \\ud83d\\ude00 or the emoji itself)")


def _clean(value: Any, surrogates: bool) -> bool:
    """The fast pass of `check_value`: True when nothing is too deep and (if asked) no string holds a surrogate."""
    if not isinstance(value, (dict, list)):
        return not (surrogates and isinstance(value, str) and _SURROGATE.search(value))
    stack = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node
        if depth >= MAX_DEPTH:
            return False
        for v in children:
            if isinstance(v, (dict, list)):
                stack.append((v, depth + 1))
            elif surrogates and isinstance(v, str) and _SURROGATE.search(v):
                return False
        if surrogates and isinstance(node, dict) and any(isinstance(k, str) and _SURROGATE.search(k) for k in node):
            return False
    return True


def may_hold_surrogates(text: str) -> bool:
    """Whether JSON text can decode to a lone surrogate (it has a \\uD800-\\uDFFF escape); a quick pre-check."""
    return _SURROGATE_ESCAPE.search(text) is not None


def loads_json(text: str, where: str, error: type[Exception] = UserFileError) -> Any:
    """json.loads that turns nesting too deep for Python's parser into `error` (JSONDecodeError passes through)."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise error(f"{where}: nested too deeply to read (thousands of [ or {{ levels); flatten the "
                    "structure") from None
    surrogates = may_hold_surrogates(text)
    if surrogates or text.count("[") + text.count("{") >= MAX_DEPTH:  # else nothing to find: skip the walk
        check_value(value, where, error, surrogates)
    return value


class StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key written twice in one mapping (naming both lines) and nesting deeper
    than MAX_DEPTH (instead of a RecursionError). Merge keys (`<<: *base`) may still be overridden."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):  # noqa: D102 - the composer's own hook
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise yaml.composer.ComposerError(None, None, f"nested more than {MAX_DEPTH} levels deep; "
                                                  "flatten the structure", mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):  # noqa: D102 - the constructor's own hook
        if isinstance(node, yaml.MappingNode):
            first: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = self.construct_object(key_node)
                try:
                    seen = first.setdefault(key, key_node.start_mark)
                except TypeError:
                    continue
                if seen is not key_node.start_mark:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (first on line {seen.line + 1}, again on line "
                        f"{key_node.start_mark.line + 1}); keep one of them", key_node.start_mark)
        return super().construct_mapping(node, deep)


def yaml_problem(e: yaml.YAMLError) -> tuple[int | None, str]:
    """(1-based line or None, the problem in words) of a PyYAML error."""
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    problem = getattr(e, "problem", None) or str(e)
    if isinstance(e, yaml.reader.ReaderError):
        code = e.character if isinstance(e.character, int) else ord(e.character)
        return None, f"the control character U+{code:04X} at position {e.position} is not allowed; remove it"
    return (mark.line + 1 if mark is not None else None), str(problem)


def load_yaml(text: str, name: str, error: type[Exception] = UserFileError) -> Any:
    """Parse YAML with StrictLoader; any YAML problem raises `error` as '<name>:<line>: <problem>'."""
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - StrictLoader is a SafeLoader
    except yaml.YAMLError as e:
        line, problem = yaml_problem(e)
        if line is None and isinstance(e, yaml.reader.ReaderError) and isinstance(e.position, int):
            line = text.count("\n", 0, e.position) + 1
        raise error(f"{name}{':' + str(line) if line else ''}: not valid YAML: {problem}") from None
    except RecursionError:
        raise error(f"{name}: nested too deeply to read; flatten the structure") from None
