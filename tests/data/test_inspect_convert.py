"""`tunelab data inspect` and `tunelab data convert`, as Python functions and through the CLI."""

from __future__ import annotations

import json
import unicodedata
from collections import Counter

import pytest
from typer.testing import CliRunner

from tunelab.cli.data import app
from tunelab.data.convert import convert
from tunelab.data.formats import parse_records
from tunelab.data.inspect import inspect_data, write_length_png
from tunelab.data.io import DataError, read_records
from tunelab.data.templates import resolve_template, tokenize_conversation


def _norm(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def test_inspect_huanhuan_counts_lengths_duplicates(tiny_tokenizer, shared_data, tmp_path):
    path = shared_data / "huanhuan.json"
    rows = json.loads(path.read_text())
    report = inspect_data(path, tiny_tokenizer, max_length=128)
    assert report.format == "alpaca" and report.records == len(rows) and not report.invalid
    assert report.roles == {"user": len(rows), "assistant": len(rows)}
    # independent references: the tokenizer on the rendered chat, and a set of normalized texts
    text = tiny_tokenizer.apply_chat_template(
        [{"role": "user", "content": rows[0]["instruction"] + (f"\n{rows[0]['input']}" if rows[0]["input"] else "")},
         {"role": "assistant", "content": rows[0]["output"]}], tokenize=False)
    assert report.token_lengths[0] == len(tiny_tokenizer(text, add_special_tokens=False)["input_ids"])
    unique = {tuple(_norm(r.get(k, "")) for k in ("instruction", "input", "output")) for r in rows}
    assert report.duplicates == len(rows) - len(unique)
    assert report.truncated == sum(n > 128 for n in report.token_lengths) > 0
    assert sum(c for _, _, c in report.histogram()) == len(rows)
    assert f"longer than max_length 128: {report.truncated}" in report.to_text()
    # the trained span is exactly the first answer and its end marker
    trained = [t for t, is_trained in report.example if is_trained]
    assert trained == [rows[0]["output"] + "<|im_end|>\n"]
    assert f"⟦{rows[0]['output']}<|im_end|>\n⟧" in report.example_text()
    import matplotlib.image

    png = write_length_png(report, tmp_path / "h.png")
    assert matplotlib.image.imread(png).shape[:2] == (350, 700)


def test_inspect_label_distribution_and_invalid_records(shared_data, tmp_path):
    path = shared_data / "fudan_news_train.jsonl"
    expected = Counter(json.loads(line)["label"] for line in path.read_text().splitlines() if line.strip())
    report = inspect_data(path)
    assert report.format == "messages" and report.labels == dict(expected)
    bad = tmp_path / "d.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n')
    report = inspect_data(bad)
    assert report.records == 2 and [r["where"] for r in report.invalid] == [f"{bad}:2"]
    assert "field 'output' is missing" in report.to_text()


def test_inspect_cli_prints_report_and_writes_png(shared_data, tmp_path):
    png = tmp_path / "lengths.png"
    res = CliRunner().invoke(app, ["inspect", str(shared_data / "llamafactory_demo/alpaca_en_demo.json"),
                                   "--model", "tiny-llama", "--max-length", "64", "--png", str(png)])
    assert res.exit_code == 0, res.output
    assert "format: alpaca" in res.output and "token-length histogram" in res.output and "⟦" in res.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("target", ["messages", "sharegpt"])
def test_convert_tool_calls_round_trip(target, shared_data, tmp_path, tiny_tokenizer):
    src = shared_data / "llamafactory_demo/glaive_toolcall_en_demo.json"
    dst = tmp_path / f"t.{target}.jsonl"
    n, found = convert(src, dst, target)
    original, _ = parse_records(read_records(src))
    again, fmt = parse_records(read_records(dst))
    assert (n, found, fmt) == (len(original), "sharegpt", target)
    assert [c.messages for c in again] == [c.messages for c in original]
    assert [c.tools and json.loads(c.tools) for c in again] == [c.tools and json.loads(c.tools) for c in original]
    # trains exactly like the original
    tpl = resolve_template(tiny_tokenizer, "chatml-tools")
    a = tokenize_conversation(tiny_tokenizer, tpl, original[3], 4096)
    b = tokenize_conversation(tiny_tokenizer, tpl, again[3], 4096)
    assert (a.input_ids, a.labels) == (b.input_ids, b.labels)


def test_convert_to_alpaca_and_refusal(shared_data, tmp_path):
    src = tmp_path / "m.jsonl"
    src.write_text(json.dumps({"messages": [
        {"role": "system", "content": "S"}, {"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}]}) + "\n")
    convert(src, tmp_path / "a.jsonl", "alpaca")
    row = json.loads((tmp_path / "a.jsonl").read_text())
    assert row == {"system": "S", "instruction": "q2", "input": "", "output": "a2", "history": [["q1", "a1"]]}
    with pytest.raises(DataError, match=r"glaive_toolcall_en_demo.json\[0\]: cannot be written as Alpaca"):
        convert(shared_data / "llamafactory_demo/glaive_toolcall_en_demo.json", tmp_path / "x.jsonl", "alpaca")
    res = CliRunner().invoke(app, ["convert", str(src), str(tmp_path / "y.jsonl"), "--to", "yaml"])
    assert res.exit_code == 1 and "--to 'yaml': choose one of alpaca, sharegpt, messages" in res.output
