"""A train refused after the run folder was set up (a bad record found while tokenizing) leaves no run folder
behind when it created it, and never touches one that existed before or that holds any training."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.engine.checkpoint import STATE_FILE
from tunelab.training.setup import discard_unstarted_run

BAD = '{"instruction": "hi", "output": "yo"}\n{"instruction": 5, "output": "x"}\n'  # record 2 is caught late


def _train_bad_data(tmp_path, output_dir: str) -> str:
    (tmp_path / "d.jsonl").write_text(BAD)
    (tmp_path / "c.yaml").write_text("model: {name: tiny-llama}\ndata: {train: d.jsonl, val_size: 0}\n"
                                     f"train: {{max_steps: 1, report: false}}\noutput_dir: {output_dir}\n")
    res = CliRunner().invoke(app, ["train", "c.yaml", "--quiet"])
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert lines == ["error: d.jsonl:2: field 'instruction' must be a string, got int"]
    return res.output


def test_a_refused_train_removes_the_folders_it_created(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "older").mkdir()  # a sibling run: runs/ existed and stays
    _train_bad_data(tmp_path, "runs/new/r")
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["older"]


def test_a_refused_train_keeps_a_folder_that_existed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "notes.txt").write_text("mine")
    _train_bad_data(tmp_path, "r")
    assert (tmp_path / "r" / "notes.txt").read_text() == "mine"
    assert (tmp_path / "r" / "config.yaml").is_file()  # set up before the record was read; left as it is


def _setup_files(run):
    run.mkdir(parents=True)
    for name in ("config.yaml", "run.json", "chat_template.jinja", "metrics.jsonl"):
        (run / name).write_text("" if name == "metrics.jsonl" else "x")
    (run / "tokenizer").mkdir()
    (run / "tokenizer" / "tokenizer.json").write_text("{}")


def test_only_set_up_files_means_unstarted(tmp_path):
    run = tmp_path / "a" / "b" / "r"
    _setup_files(run)
    assert discard_unstarted_run(run, tmp_path / "a")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("trained", ["checkpoint", "metrics", "adapter", "model", "summary.json", "best"])
def test_any_trace_of_training_keeps_the_folder(tmp_path, trained):
    run = tmp_path / "r"
    _setup_files(run)
    if trained == "checkpoint":
        (run / "checkpoints" / "step-000001").mkdir(parents=True)
        (run / "checkpoints" / "step-000001" / STATE_FILE).write_text("x")
    elif trained == "metrics":
        (run / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    elif trained == "summary.json":
        (run / trained).write_text("{}")
    else:
        (run / trained).mkdir()
    assert not discard_unstarted_run(run, run)
    assert (run / "config.yaml").is_file()
