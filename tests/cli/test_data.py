"""`tunelab data ...` preparation commands through typer's CliRunner: files written, summaries, errors."""

import json

import pytest
from typer.testing import CliRunner

from tunelab.cli.data import app
from tunelab.data.io import read_records

runner = CliRunner()


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_clean_writes_kept_and_rejected_with_positions(tmp_path):
    src = _write_jsonl(tmp_path / "d.jsonl", [{"instruction": "<b>Hi</b>  there", "output": "ok"},
                                              {"instruction": "", "output": ""},
                                              {"instruction": "q", "output": "x" * 30}])
    res = _invoke("clean", src, "--max-chars", 20)
    assert res.exit_code == 0, res.output
    assert [r.data for r in read_records(tmp_path / "d.clean.jsonl")] == [{"instruction": "Hi there", "output": "ok"}]
    side = [json.loads(x) for x in (tmp_path / "d.clean.rejected.jsonl").read_text().splitlines()]
    assert [(r["position"], r["reason"]) for r in side] == [(f"{src}:2", "empty"), (f"{src}:3", "too_long")]
    assert "too long" in res.output and "kept" in res.output


def test_dedup_huanhuan(shared_data, tmp_path):
    out = tmp_path / "hh.json"
    res = _invoke("dedup", shared_data / "huanhuan.json", "-o", out, "--mode", "exact")
    assert res.exit_code == 0, res.output
    assert len(json.loads(out.read_text())) == 3617
    removed = (tmp_path / "hh.rejected.jsonl").read_text().splitlines()
    assert len(removed) == 112 and "duplicate_of" in json.loads(removed[0])
    assert "3,617" in res.output


def test_split_stratified_files(shared_data, tmp_path):
    res = _invoke("split", shared_data / "fudan_news_train.jsonl", "--out-dir", tmp_path / "s", "--val", 0.15,
                  "--test", 0.1, "--seed", 3)
    assert res.exit_code == 0, res.output
    sizes = {p: len(read_records(tmp_path / "s" / f"{p}.jsonl")) for p in ("train", "val", "test")}
    assert sizes == {"train": 240, "val": 48, "test": 32}
    assert "stratified by 'label'" in res.output
    res = _invoke("split", shared_data / "fudan_news_train.jsonl", "--out", tmp_path / "n", "--val", 0.3,
                  "--stratify", "none")
    assert res.exit_code == 0 and "outside the usual 0.15-0.2" in res.output
    assert not (tmp_path / "n" / "test.jsonl").exists()


def test_extract_dialogue_gb18030_script(tmp_path):
    script = tmp_path / "play.txt"
    script.write_bytes("第1幕\n槿汐：小主。\n甄嬛：嗯。\n".encode("gb18030"))
    res = _invoke("extract-dialogue", script, "--character", "甄嬛", "--history", 1, "-o", tmp_path / "hh.json")
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "hh.json").read_text()) == [
        {"instruction": "小主。", "input": "", "output": "嗯。", "history": []}]


def test_augment_synonyms(tmp_path):
    src = _write_jsonl(tmp_path / "a.jsonl", [{"instruction": "我今天非常高兴", "output": "好的"}])
    res = _invoke("augment", src, "--op", "synonym", "--rate", 1.0, "--copies", 2)
    assert res.exit_code == 0, res.output
    rows = [r.data for r in read_records(tmp_path / "a.aug.jsonl")]
    assert rows[0] == {"instruction": "我今天非常高兴", "output": "好的"} and len(rows) == 3
    assert all(r["output"] == "好的" and r["instruction"] != "我今天非常高兴" for r in rows[1:])


@pytest.mark.parametrize("cmd", ["clean", "dedup", "split", "augment"])
def test_bad_input_names_file_and_line(tmp_path, cmd):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": oops}\n', encoding="utf-8")
    res = _invoke(cmd, bad)
    assert res.exit_code == 1
    assert f"{bad}:2: not valid JSON" in res.output
    res = _invoke(cmd, tmp_path / "missing.json")
    assert res.exit_code == 1 and "missing.json: no such data file" in res.output


def test_extract_dialogue_several_scripts_typos_and_no_merge(tmp_path):
    ep1, ep2 = tmp_path / "ep1.txt", tmp_path / "ep2.txt"
    ep1.write_text("皇帝：朕乏了。\n甄嬛：臣妾告退。\n甄嬛：皇上保重。\n", encoding="utf-8")
    ep2.write_text("第1幕\n温实初：小主。\n皇帝；进来吧。\n甄嬛：是。\n太医；脉象平稳。\n", encoding="utf-8")
    res = _invoke("extract-dialogue", ep1, ep2, "--character", "甄嬛")
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "甄嬛.json").read_text(encoding="utf-8")) == [
        {"instruction": "朕乏了。", "input": "", "output": "臣妾告退。皇上保重。"},
        {"instruction": "进来吧。", "input": "", "output": "是。太医；脉象平稳。"}]
    assert f"warning: {ep2}:5: 太医；脉象平稳。: a ';' after an unknown name" in res.output
    counts = {line.strip("│ ").rsplit("│", 1)[0].strip(): line.rsplit("│", 2)[1].strip()
              for line in res.output.splitlines() if line.count("│") == 3}
    assert counts["files"] == "2" and counts["semicolon markers"] == "1" and counts["unknown markers"] == "1"
    res = _invoke("extract-dialogue", ep1, "--character", "甄嬛", "--no-merge", "-o", tmp_path / "one.jsonl")
    assert res.exit_code == 0, res.output
    assert [r.data for r in read_records(tmp_path / "one.jsonl")] == [
        {"instruction": "朕乏了。", "input": "", "output": "臣妾告退。"},
        {"instruction": "朕乏了。", "input": "", "output": "皇上保重。"}]


def test_extract_dialogue_errors(tmp_path):
    res = _invoke("extract-dialogue", tmp_path / "none.txt", "--character", "A")
    assert res.exit_code == 1 and "none.txt: no such script file" in res.output
    script = tmp_path / "s.txt"
    script.write_text("甲：你好\n乙：好\n", encoding="utf-8")
    res = _invoke("extract-dialogue", script, "--character", "丙")
    assert res.exit_code == 1 and "no line spoken by '丙'" in res.output and "甲 (1)" in res.output


def test_bad_option_values_are_clear(tmp_path):
    src = _write_jsonl(tmp_path / "d.jsonl", [{"text": "a b c"}])
    res = _invoke("dedup", src, "--mode", "fuzzy")
    assert res.exit_code == 1 and "mode must be 'exact', 'near' or 'both'" in res.output
    res = _invoke("augment", src, "--op", "paraphrase")
    assert res.exit_code == 1 and "unknown augmentation" in res.output
    res = _invoke("augment", src, "--generate", 2)
    assert res.exit_code == 1 and "--generate needs --model" in res.output


def test_help_shows_examples():
    for cmd in ("clean", "dedup", "split", "extract-dialogue", "augment"):
        res = _invoke(cmd, "--help")
        assert res.exit_code == 0 and "tunelab data " + cmd in res.output
