"""Data that cannot train stops before training with a clear message."""

import json

import pytest

import tunelab
from tunelab.data.io import DataError


def test_classification_with_one_class_is_refused(tmp_path):
    data = tmp_path / "one_class.jsonl"
    data.write_text("".join(json.dumps({"text": f"news item {i}", "label": "sports"}) + "\n" for i in range(6)))
    with pytest.raises(DataError, match="classification needs at least 2 classes, found \\['sports'\\]"):
        tunelab.train({"model": {"name": "tiny-llama"}, "stage": "classify",
                       "data": {"train": str(data), "val_size": 0},
                       "train": {"max_steps": 1, "batch_size": 2}, "output_dir": str(tmp_path / "run")},
                      progress=False)
    assert not (tmp_path / "run" / "summary.json").exists()


# --- files that cannot be read as written: one DataError naming the file and the line, and the fix -----------

import logging  # noqa: E402
import re  # noqa: E402

from typer.testing import CliRunner  # noqa: E402

from tunelab.cli import app  # noqa: E402
from tunelab.config.data import DataCfg  # noqa: E402
from tunelab.data.formats import parse_records  # noqa: E402
from tunelab.data.io import Record, read_records  # noqa: E402
from tunelab.data.pipeline import prepare_data  # noqa: E402
from tunelab.data.sources import read_any  # noqa: E402
from tunelab.data.stage_formats import load_text  # noqa: E402
from tunelab.data.streaming import iter_jsonl  # noqa: E402
from tunelab.data.templates import resolve_template  # noqa: E402

ROW = {"instruction": "Name a colour.", "output": "Blue."}


def _cli(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    text = result.output + (result.stderr if result.stderr_bytes is not None else "")
    assert result.exit_code != 0, text
    assert "Traceback" not in text, text
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return " ".join(text.split())


def _jsonl(rows) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


BAD_FILES = [
    ("latin.jsonl", _jsonl([ROW] * 3) + '{"instruction": "café", "output": "x"}\n'.encode("latin-1"),
     "latin.jsonl:4: not UTF-8 text (byte 0xe9 at byte offset", "iconv -f latin1 -t utf-8"),
    ("wide.json", json.dumps([ROW]).encode("utf-16"), "wide.json: saved as UTF-16", "re-save it as UTF-8"),
    ("blob.jsonl", _jsonl([ROW]) + b"\x89PNG\x00\x00\x1a", "blob.jsonl:2: binary content (a NUL byte", "UTF-8"),
    ("latin.csv", "instruction,output\nq,café\n".encode("latin-1"), "latin.csv:2: not UTF-8 text", "iconv"),
    ("deep.json", b"[" * 6000 + b"]" * 6000, "deep.json: nested too deeply to read", "flatten"),
    ("deep.jsonl", _jsonl([ROW]) + b'{"a": ' + b"[" * 6000 + b"]" * 6000 + b"}\n", "deep.jsonl:2: nested too deeply",
     "flatten"),
    ("deeper.jsonl", _jsonl([{**ROW, "x": json.loads("[" * 300 + "]" * 300)}]), "deeper.jsonl:1: nested more than 100",
     "flatten"),
    ("half.jsonl", _jsonl([ROW]) + b'{"instruction": "a", "output": "smile \\ud83d"}\n',
     "half.jsonl:2: field 'output' holds a lone UTF-16 surrogate escape", "write the whole character"),
    ("half.json", json.dumps([ROW, {"messages": [{"role": "user", "content": "\ud800"}]}]).encode(),
     "half.json[1]: field 'messages[0].content' holds a lone UTF-16 surrogate", "remove it"),
    ("garbage.parquet", b"this is not parquet at all", "garbage.parquet: not a readable Parquet file (ArrowInvalid",
     "to_parquet"),
    ("fake.parquet", b"PAR1" + b"\x00" * 64 + b"PAR1", "fake.parquet: not a readable Parquet file", "to_parquet"),
]


@pytest.mark.parametrize("name, content, message, fix", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_unreadable_data_is_one_data_error_naming_file_and_line(tmp_path, name, content, message, fix):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError) as e:
        read_any(path)
    text = str(e.value).replace(f"{tmp_path}/", "")
    assert message in text and fix in text
    if name.endswith(".jsonl"):  # the streaming reader says the same
        with pytest.raises(DataError) as e:
            list(iter_jsonl(path))
        assert message in str(e.value).replace(f"{tmp_path}/", "")


def test_raw_text_files_are_decoded_strictly(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_bytes("first document\nsecond, naïve\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"corpus.txt:2: not UTF-8 text \(byte 0xef"):
        load_text(path)


def test_data_inspect_names_the_file_and_line(tmp_path):
    path = tmp_path / "latin.jsonl"
    path.write_bytes(BAD_FILES[0][1])
    out = _cli("data", "inspect", str(path), "--model", "tiny-llama")
    assert f"{path}:4: not UTF-8 text" in out


def test_generate_checks_its_data_before_loading_the_run(tmp_path):
    path = tmp_path / "latin.jsonl"
    path.write_bytes(BAD_FILES[0][1])
    out = _cli("generate", str(tmp_path / "no-such-run"), "--data", str(path), "--out", str(tmp_path / "p.jsonl"))
    assert f"{path}:4: not UTF-8 text" in out


def _train_cfg(tmp_path, data):
    return {"model": {"name": "tiny-llama"}, "data": {"train": str(data), "val_size": 0},
            "train": {"max_steps": 1, "batch_size": 2}, "output_dir": str(tmp_path / "run")}


@pytest.mark.parametrize("content, message", [
    (b"", "no records (the file is empty)"),
    (b"\n  \n", "no records (the file is empty)"),
    (BAD_FILES[0][1], ":4: not UTF-8 text"),
])
def test_train_refuses_unreadable_data_before_loading_the_model(tmp_path, content, message):
    data = tmp_path / "d.jsonl"
    data.write_bytes(content)
    with pytest.raises(DataError, match=re.escape(message)) as e:
        tunelab.train(_train_cfg(tmp_path, data), progress=False)
    assert str(data) in str(e.value)
    assert not (tmp_path / "run").exists()  # the run folder (and the model) never came to be
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps(_train_cfg(tmp_path, data)))
    out = _cli("train", str(cfg))
    assert f"{data}" in out and message in out


def test_a_tools_string_that_is_not_json_is_an_error(tmp_path):
    rec = Record({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}],
                  "tools": "get_weather(city)"}, "t.jsonl:3")
    with pytest.raises(DataError, match=r"t.jsonl:3: field 'tools' is a string but not JSON .*write the tool "
                                        r"schemas as a JSON list"):
        parse_records([rec])
    ok = Record({**rec.data, "tools": json.dumps([{"name": "get_weather"}])}, "t.jsonl:4")
    assert parse_records([ok])[0][0].tools == json.dumps([{"name": "get_weather"}])


def test_empty_answers_are_left_out_warned_and_listed(tmp_path, tiny_tokenizer, caplog):
    rows = [{"instruction": f"q{i}", "output": f"answer {i}"} for i in range(6)]
    rows[2]["output"] = ""
    rows[4]["output"] = "   "
    data = tmp_path / "d.jsonl"
    data.write_bytes(_jsonl(rows))
    cfg = DataCfg(train=str(data), val_size=0, max_length=64, cache=False)
    with caplog.at_level(logging.WARNING, logger="tunelab.data"):
        prepared = prepare_data(cfg, tiny_tokenizer, resolve_template(tiny_tokenizer, None), seed=1,
                                run_dir=tmp_path)
    assert len(prepared.train) == 4
    assert prepared.stats["empty_answers"] == 2 and prepared.stats["rejected"] == 2
    listed = [json.loads(line) for line in (tmp_path / "rejected.jsonl").read_text().splitlines()]
    assert [r["where"] for r in listed] == [f"{data}:3", f"{data}:5"]
    assert all(r["reason"] == "empty_answer" and "the assistant answer is empty" in r["error"] for r in listed)
    assert f"2 records with an empty assistant answer left out of training (first: {data}:3)" in caplog.text
    assert str(tmp_path / "rejected.jsonl") in caplog.text


def test_an_empty_turn_inside_a_conversation_counts_too(tmp_path):
    rec = Record({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": ""},
                               {"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}]}, "m.jsonl:1")
    empty: list[dict] = []
    convs, _ = parse_records([rec], empty=empty)
    assert convs == [] and "assistant turn 1 of 2 is empty" in empty[0]["error"]
    assert len(parse_records([rec])[0]) == 1  # callers that do not ask (convert) keep the record as written


def test_read_records_of_a_good_file_still_reads(tmp_path):
    path = tmp_path / "ok.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + _jsonl([ROW, {"instruction": "emoji \U0001F600", "output": "ok"}]))
    path2 = tmp_path / "ok2.jsonl"
    path2.write_text('{"instruction": "pair \\ud83d\\ude00", "output": "ok"}\n')
    assert [r.data for r in read_records(path)][0] == ROW
    assert read_records(path2)[0].data["instruction"] == "pair \U0001F600"


def test_eval_checks_its_data_before_loading_the_run(tmp_path):
    path = tmp_path / "val.jsonl"
    path.write_bytes(_jsonl([ROW]) + b'{"instruction": "\\ud800", "output": "x"}\n')
    out = _cli("eval", str(tmp_path / "no-such-run"), "--data", f"qa={path}")
    assert f"{path}:2: field 'instruction' holds a lone UTF-16 surrogate" in out


def test_train_refuses_a_json_syntax_error_before_loading_a_model(tmp_path, monkeypatch):
    """Record syntax is checked with the other file checks, so a broken line costs no model load."""
    import tunelab
    from tunelab.data.io import DataError
    from tunelab.training import setup as recipe

    def no_model(*a, **k):
        raise AssertionError("the model was loaded before the data was checked")

    monkeypatch.setattr(recipe, "load_model", no_model)
    bad = tmp_path / "train.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": \n', encoding="utf-8")
    cfg = {"model": {"name": "tiny-llama"}, "data": {"train": str(bad)}, "output_dir": str(tmp_path / "run")}
    with pytest.raises(DataError, match=r"train\.jsonl:2"):
        tunelab.train(cfg, progress=False)
    assert not (tmp_path / "run").exists()
