"""Commands behave as a person expects: generate takes prompt-only records (its own output's form), runs finds
nested run folders, config keys prints whole key names when piped, --out is spelled the same everywhere."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.config import schema_lines
from tunelab.infer.predict import read_prompts

runner = CliRunner()
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_generate_reads_prompt_only_records_and_its_own_output(tmp_path: Path) -> None:
    convs = read_prompts(str(_jsonl(tmp_path / "p.jsonl", [
        {"prompt": "What is 2 + 2?"},
        {"prompt": "Capital of France?", "system": "Be brief.", "reference": "Paris"},
        {"prompt": "Hi", "reference": None, "prediction": "Hello", "settings": {"seed": 0}},  # a generate row
    ])))
    assert [c.messages for c in convs] == [
        [{"role": "user", "content": "What is 2 + 2?"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"},
         {"role": "assistant", "content": "Paris"}],
        [{"role": "user", "content": "Hi"}]]
    trl = read_prompts(str(_jsonl(tmp_path / "t.jsonl", [
        {"prompt": [{"role": "user", "content": "Q"}], "completion": [{"role": "assistant", "content": "A"}]}])))
    assert trl[0].messages == [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]


def test_generate_help_shows_the_input_forms() -> None:
    out = runner.invoke(app, ["generate", "--help"], env={"COLUMNS": "200"}).output
    for form in ('{"prompt": "What is 2 + 2?"}', '{"instruction": "...", "input": "...", "output": "..."}',
                 '{"messages": [...]}', "--output"):
        assert form in out


def test_runs_lists_nested_run_folders(tmp_path: Path) -> None:
    shutil.copytree(FIXTURES / "run_v0", tmp_path / "runs" / "top")
    shutil.copytree(FIXTURES / "run_v0", tmp_path / "runs" / "project" / "exp1" / "run_v0")
    (tmp_path / "runs" / "empty" / "deeper").mkdir(parents=True)
    res = runner.invoke(app, ["runs", str(tmp_path / "runs")], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "project/exp1/run_v0" in res.output and "top" in res.output
    from tunelab.eval.report import list_runs

    assert sorted(r["name"] for r in list_runs(tmp_path / "runs")) == ["project/exp1/run_v0", "top"]


def test_config_keys_keeps_whole_names_when_piped() -> None:
    res = runner.invoke(app, ["config", "keys"])  # CliRunner's output is no terminal
    assert res.exit_code == 0, res.output
    keys = [line.split("\t")[0] for line in res.output.splitlines()]
    assert keys == [row[0] for row in schema_lines()]
    assert max(map(len, keys)) > 30  # long names such as train.speed.* arrive whole


def test_out_and_output_are_one_option(tmp_path: Path) -> None:
    src = _jsonl(tmp_path / "d.jsonl", [{"instruction": "a", "output": "b"}, {"instruction": "a", "output": "b"}])
    for spelling in ("--out", "--output", "-o"):
        dst = tmp_path / f"dedup{spelling}.jsonl"
        res = runner.invoke(app, ["data", "dedup", str(src), spelling, str(dst), "--mode", "exact"])
        assert res.exit_code == 0, res.output
        assert len(dst.read_text().splitlines()) == 1
    for cmd in (["export"], ["generate"], ["data", "clean"], ["data", "extract-dialogue"], ["data", "augment"]):
        out = runner.invoke(app, [*cmd, "--help"], env={"COLUMNS": "200"}).output
        assert "--out" in out and "--output" in out, cmd


def test_an_interrupted_run_names_the_resume_override_once(monkeypatch, tmp_path: Path) -> None:
    import tunelab
    from tunelab.engine.loop import TrainingInterrupted

    def interrupted(*args, **kwargs):
        raise TrainingInterrupted(tmp_path / "checkpoints" / "step-000021")

    monkeypatch.setattr(tunelab, "train", interrupted)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("model: {name: tiny-llama}\n")
    res = runner.invoke(app, ["train", str(cfg), "train.max_steps=30", "train.resume=auto"])
    assert res.exit_code == 130
    hint = res.output.split("continue with:")[1].split()
    assert hint == ["tunelab", "train", str(cfg), "train.max_steps=30", "train.resume=auto"]


def test_done_line_leaves_out_a_loss_rate_the_stage_does_not_count():
    from tunelab.cli import rate_text

    sft = {"steady_tokens_per_s": 1234.4, "loss_tokens_per_s": 610.0, "first_step_s": 2.25, "tokens_per_s": 900.0}
    assert rate_text(sft) == "1,234 tok/s after step 1 (real tokens; 610 loss tok/s over training), first step 2.2 s"
    dpo = sft | {"loss_tokens_per_s": 0}  # preference stages score whole answers: no loss tokens counted
    assert rate_text(dpo) == "1,234 tok/s after step 1 (real tokens), first step 2.2 s"
    assert rate_text({"steady_tokens_per_s": None, "tokens_per_s": 50.0}) == "50 tok/s"  # a one-step run
