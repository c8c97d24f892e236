"""Blinded human A/B evaluation: write a rating sheet, read it back as win rates with confidence intervals.

The sheet (CSV, opens in any spreadsheet) shows two answers per prompt as "answer_1" and
"answer_2" in a random order per row, so raters cannot learn which system is which. The
order is kept in a sidecar key file (`<sheet>.key.json`) that raters never see.
"""

from __future__ import annotations

import csv
import io
import json
import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tunelab.utils.io import atomic_write_json, atomic_write_text

SHEET_COLUMNS = ["id", "prompt", "answer_1", "answer_2", "better", "notes"]
ROW_KEYS = ("prompt", "answer_a_source", "answer_a", "answer_b_source", "answer_b")
VERDICTS = {"1": "answer_1", "2": "answer_2", "tie": "tie"}
Z95 = 1.959963984540054  # two-sided 95% normal quantile


class HumanEvalError(ValueError):
    """A rating sheet or its key is invalid; the message names the file and line and how to fix it."""


def key_path(sheet: str | Path) -> Path:
    """Where the key for a sheet lives: ratings.csv -> ratings.key.json."""
    sheet = Path(sheet)
    return sheet.with_name(sheet.stem + ".key.json")


def _cell(text: str) -> str:
    """Defuse spreadsheet formulas (CSV injection): a leading = + - @ makes Excel evaluate the cell."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def write_human_sheet(rows: Sequence[dict[str, Any]], path: str | Path, seed: int = 0) -> tuple[Path, Path]:
    """Write a blinded rating CSV and its key; returns (sheet path, key path).

    Each row needs prompt, answer_a_source, answer_a, answer_b_source, answer_b. The A/B
    order shown to raters is drawn per row from `random.Random(seed)`, so the same seed
    gives the same sheet. Raters fill "better" with 1, 2 or tie.
    """
    problems = [f"row {i}: missing {', '.join(k for k in ROW_KEYS if k not in row)}"
                for i, row in enumerate(rows) if any(k not in row for k in ROW_KEYS)]
    problems += [f"row {i}: answer_a_source and answer_b_source are both {row['answer_a_source']!r}; "
                 "compare two different systems" for i, row in enumerate(rows)
                 if not problems and row["answer_a_source"] == row["answer_b_source"]]
    if problems:
        raise HumanEvalError("cannot write the rating sheet:\n  " + "\n  ".join(problems))
    rng = random.Random(seed)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(SHEET_COLUMNS)
    key: dict[str, dict[str, str]] = {}
    for i, row in enumerate(rows, start=1):
        a, b = (row["answer_a_source"], row["answer_a"]), (row["answer_b_source"], row["answer_b"])
        first, second = (b, a) if rng.random() < 0.5 else (a, b)
        writer.writerow([i, _cell(str(row["prompt"])), _cell(str(first[1])), _cell(str(second[1])), "", ""])
        key[str(i)] = {"answer_1": str(first[0]), "answer_2": str(second[0])}
    path = Path(path)
    # utf-8-sig: the BOM makes Excel read Chinese text correctly
    atomic_write_text(path, "\ufeff" + buf.getvalue())
    kpath = atomic_write_json(key_path(path), {"sheet": path.name, "seed": seed, "rows": key})
    return path, kpath


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion (Wilson, 1927); well-behaved near 0, 1 and small n."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, center - half), min(1.0, center + half))


def _load_key(csv_path: Path, key_file: Path | None) -> dict[str, dict[str, str]]:
    kpath = key_file or key_path(csv_path)
    if not kpath.is_file():
        raise HumanEvalError(f"{csv_path}: its key file {kpath} is missing; it was written next to the sheet "
                             "by write_human_sheet (pass key_file= if you moved it)")
    try:
        return json.loads(kpath.read_text(encoding="utf-8"))["rows"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise HumanEvalError(f"{kpath}: not a rating key file ({e})") from None


def _read_verdicts(csv_path: Path, key: dict[str, dict[str, str]]) -> list[tuple[str, str, str]]:
    """(system on answer_1, system on answer_2, verdict) per rated row; every problem is collected."""
    text = csv_path.read_text(encoding="utf-8-sig")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    missing = [c for c in ("id", "better") if c not in (reader.fieldnames or [])]
    if missing:
        raise HumanEvalError(f"{csv_path}:1: header lacks column(s) {', '.join(missing)}; "
                             f"expected {', '.join(SHEET_COLUMNS)}")
    out, problems, seen = [], [], {}
    start = reader.line_num + 1
    for row in reader:
        where = f"{csv_path}:{start}"
        start = reader.line_num + 1  # a quoted cell may span several lines
        rid, verdict = (row.get("id") or "").strip(), (row.get("better") or "").strip().lower()
        if rid not in key:
            problems.append(f"{where}: id {rid!r} is not in the key file; do not edit the id column")
        elif rid in seen:
            problems.append(f"{where}: id {rid} already rated at line {seen[rid]}; remove the duplicate row")
        elif not verdict:
            problems.append(f"{where} (id {rid}): 'better' is empty; fill in 1, 2 or tie")
        elif verdict not in VERDICTS:
            problems.append(f"{where} (id {rid}): 'better' is {verdict!r}; use 1, 2 or tie")
        else:
            out.append((key[rid]["answer_1"], key[rid]["answer_2"], verdict))
        seen.setdefault(rid, where.rsplit(":", 1)[1])
    if problems:
        raise HumanEvalError(f"{len(problems)} problem(s) in the ratings:\n  " + "\n  ".join(problems))
    if not out:
        raise HumanEvalError(f"{csv_path}: no rated rows")
    return out


def import_ratings(csv_path: str | Path, key_file: str | Path | None = None) -> dict[str, Any]:
    """Un-blind a filled-in sheet and compute each system's win rate with a 95% Wilson interval.

    A tie counts as half a win for both sides. Returns {"n": rated rows, "systems": {name:
    {"wins", "ties", "losses", "n", "win_rate", "ci95": [lo, hi]}}}. Empty or invalid
    ratings raise HumanEvalError listing every bad line.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise HumanEvalError(f"{csv_path}: no such rating sheet")
    verdicts = _read_verdicts(csv_path, _load_key(csv_path, Path(key_file) if key_file else None))
    tally: dict[str, dict[str, int]] = {}
    for sys1, sys2, verdict in verdicts:
        for system in (sys1, sys2):
            tally.setdefault(system, {"wins": 0, "ties": 0, "losses": 0})
        if verdict == "tie":
            tally[sys1]["ties"] += 1
            tally[sys2]["ties"] += 1
        else:
            winner, loser = (sys1, sys2) if verdict == "1" else (sys2, sys1)
            tally[winner]["wins"] += 1
            tally[loser]["losses"] += 1
    systems = {}
    for name, t in sorted(tally.items()):
        n = t["wins"] + t["ties"] + t["losses"]
        score = t["wins"] + 0.5 * t["ties"]
        systems[name] = {**t, "n": n, "win_rate": score / n, "ci95": list(wilson_interval(score, n))}
    return {"n": len(verdicts), "systems": systems}


def _uncell(text: str) -> str:
    """Undo `_cell`: the quote added before a leading = + - @ (tab, CR) is not part of the answer."""
    return text[1:] if text[:1] == "'" and text[1:2] in ("=", "+", "-", "@", "\t", "\r") else text


def rated_rows(csv_path: str | Path, key_file: str | Path | None = None) -> list[dict[str, str]]:
    """The rated rows of a filled-in sheet with their texts: {"id", "prompt", "answer_1", "answer_2", "better",
    "answer_1_source", "answer_2_source"}; "better" is "1", "2" or "tie". Invalid ratings raise as in
    `import_ratings`. Used to measure an LLM judge against the raters (tunelab.eval.judge.human_agreement)."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise HumanEvalError(f"{csv_path}: no such rating sheet")
    key = _load_key(csv_path, Path(key_file) if key_file else None)
    _read_verdicts(csv_path, key)  # every problem reported at once, with its line
    reader = csv.DictReader(io.StringIO(csv_path.read_text(encoding="utf-8-sig"), newline=""))
    missing = [c for c in ("prompt", "answer_1", "answer_2") if c not in (reader.fieldnames or [])]
    if missing:
        raise HumanEvalError(f"{csv_path}:1: header lacks column(s) {', '.join(missing)}; the judge needs the texts")
    out = []
    for row in reader:
        rid = (row.get("id") or "").strip()
        out.append({"id": rid, "prompt": _uncell(row["prompt"]), "answer_1": _uncell(row["answer_1"]),
                    "answer_2": _uncell(row["answer_2"]), "better": row["better"].strip().lower(),
                    "answer_1_source": key[rid]["answer_1"], "answer_2_source": key[rid]["answer_2"]})
    return out
