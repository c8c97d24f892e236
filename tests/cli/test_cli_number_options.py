"""Numeric options of generate, chat and eval: NaN, infinities and out-of-range values are one clear line,
given before the run, its data or its model are read (so the run folder here need not even exist)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from tunelab.cli import app


def _refused(args: list[str]) -> str:
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


GEN = ["generate", "no-such-run", "--data", "no-such.jsonl", "--out", "preds.jsonl"]


@pytest.mark.parametrize("option, value, expected", [
    ("--temperature", "nan", "error: --temperature must be a number >= 0 (got nan)"),
    ("--temperature", "inf", "error: --temperature must be a number >= 0 (got inf)"),
    ("--temperature", "-0.5", "error: --temperature must be a number >= 0 (got -0.5)"),
    ("--top-p", "2", "error: --top-p must be a number > 0 and <= 1 (got 2.0)"),
    ("--top-p", "nan", "error: --top-p must be a number > 0 and <= 1 (got nan)"),
    ("--top-p", "0", "error: --top-p must be a number > 0 and <= 1 (got 0.0)"),
    ("--max-new-tokens", "-1", "error: --max-new-tokens must be a whole number >= 1 (got -1)"),
    ("--batch-size", "0", "error: --batch-size must be a whole number >= 1 (got 0)"),
    ("--limit", "-1", "error: --limit must be a whole number >= 1 (got -1)"),
    ("--seed", "99999999999999999999999", "error: --seed must be a whole number >= 0 and <= 9,223,372,036,854,775,807 "
     "(got 99999999999999999999999)"),
])
def test_generate_refuses_bad_numbers_before_loading(tmp_path, monkeypatch, option, value, expected):
    monkeypatch.chdir(tmp_path)
    assert _refused(GEN + [option, value]) == expected
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_generate_out_must_be_a_file_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.jsonl").write_text('{"instruction": "hi", "output": "yo"}\n')
    line = _refused(["generate", "no-such-run", "--data", "p.jsonl", "--out", "."])
    assert line == "error: --out .: is a folder; give a file path, e.g. --out out.jsonl"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.jsonl"]


@pytest.mark.parametrize("option, value", [("--temperature", "nan"), ("--top-p", "1.5"),
                                           ("--max-new-tokens", "0")])
def test_chat_checks_the_same_sampling_options(option, value):
    assert _refused(["chat", "no-such-run", "-p", "hi", option, value]).startswith(f"error: {option} must be")


@pytest.mark.parametrize("option, value", [("--max-new-tokens", "0"), ("--batch-size", "-2"), ("--limit", "0")])
def test_eval_checks_its_counts(option, value):
    assert _refused(["eval", "no-such-run", "--data", "x.jsonl", option, value]).startswith(f"error: {option} must be")
