"""tunelab.runfolder: every file of a run folder written and read back through one typed API, the refusal
of folders that are not runs, and the names other modules still declare agreeing with it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tunelab.config import ConfigError, build_config
from tunelab.methods import METHODS, get_method
from tunelab.models.tiny import tiny_tokenizer
from tunelab.run import Run, RunNotFound
from tunelab.runfolder import (
    CONFIG_FILE,
    METRICS_FILE,
    RunFileError,
    RunFolder,
    weights_dir_name,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def cfg(out: Path, **over):
    return build_config({"model": {"name": "tiny-llama"}, "output_dir": str(out), "data": {"train": "x.jsonl"},
                         "method": {"name": "lora", "r": 4}, **over})


def test_config_round_trip_is_the_same_runcfg(tmp_path):
    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    written = cfg(folder.path, optim={"head_lr_scale": 2.0})
    folder.write_config(written)
    assert folder.read_config() == written
    assert folder.read_config_dict()["optim"]["head_lr_scale"] == 2.0


def test_info_summary_and_metrics_round_trip(tmp_path):
    folder = RunFolder(tmp_path)
    assert folder.read_info() is None and folder.read_summary() is None and folder.read_metrics() == []
    folder.update_info({"tasks": ["a"]})  # no run.json yet: nothing to update, nothing created
    assert not folder.info_path.exists()
    folder.write_info({"base_model": "tiny-llama", "stage": "sft"})
    folder.update_info({"tasks": ["a", "b"]})
    assert folder.read_info() == {"base_model": "tiny-llama", "stage": "sft", "tasks": ["a", "b"]}
    folder.write_summary({"steps": 3, "train_loss": 1.5})
    assert folder.read_summary() == {"steps": 3, "train_loss": 1.5} and folder.is_finished()
    rows = [{"step": 1, "loss": 2.0}, {"step": 2, "eval_loss": 1.9}]
    (tmp_path / METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    assert folder.read_metrics() == rows


def test_template_and_tokenizer_round_trip(tmp_path):
    folder = RunFolder(tmp_path)
    template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
    tok = tiny_tokenizer()
    folder.write_template(template)
    folder.write_tokenizer(tok, template)
    assert folder.read_template() == template
    assert (folder.tokenizer_dir / "chat_template.jinja").read_text() == template  # the folder loads on its own
    again = folder.load_tokenizer()
    assert again("hello world").input_ids == tok("hello world").input_ids and again.pad_token is not None


def test_weights_checkpoints_and_eval_paths(tmp_path):
    folder = RunFolder(tmp_path)
    assert folder.weights_path("lora") == tmp_path / "adapter" and folder.weights_path("full") == tmp_path / "model"
    assert not folder.has_weights()
    folder.weights_path("lora").mkdir()
    assert folder.has_weights()
    assert folder.checkpoint_dir(12) == tmp_path / "checkpoints" / "step-000012"
    for step in (100, 2, 30):
        folder.checkpoint_dir(step).mkdir(parents=True)
    assert [p.name for p in folder.checkpoint_dirs()] == ["step-000002", "step-000030", "step-000100"]
    first, second = folder.eval_path("qa"), None
    first.parent.mkdir(parents=True, exist_ok=True)
    first.write_text(json.dumps({"metrics": {"acc": 1.0}}))
    second = folder.eval_path("qa")
    assert first != second and first.parent == folder.eval_dir and first.name.startswith("qa-")
    assert folder.eval_results() == [first]
    assert RunFolder.predictions_path(first).name == first.stem + ".predictions.jsonl"


def test_every_methods_weights_folder_is_the_one_runfolder_names():
    for name in METHODS:
        assert get_method(name).WEIGHTS_DIR == weights_dir_name(name), name


def test_the_jsonl_tracker_writes_the_metrics_file_runfolder_reads():
    from tunelab.tracking.jsonl import JsonlTracker

    assert JsonlTracker().filename == METRICS_FILE


def test_a_folder_that_is_not_a_run_is_refused_with_what_to_pass(tmp_path):
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    with pytest.raises(RunNotFound, match=r"hf: not a tunelab run folder \(no config.yaml\); pass the output_dir"):
        RunFolder(hf).require_config()
    with pytest.raises(RunNotFound, match="not a tunelab run folder"):
        Run(hf)
    assert not RunFolder(hf).is_run() and not RunFolder(hf).has_marker()
    # an HF model folder that happens to hold config.yaml + run.json is still a model, not a run
    (hf / CONFIG_FILE).write_text("model: {name: x}\n")
    (hf / "run.json").write_text("{}")
    assert not RunFolder(hf).is_run()


def test_unreadable_files_name_the_file_and_line(tmp_path):
    folder = RunFolder(tmp_path)
    folder.metrics_path.write_text('{"step": 1}\n{"step": 2,\n')
    with pytest.raises(RunFileError, match=r"metrics.jsonl:2: not valid JSON"):
        folder.read_metrics()
    folder.summary_path.write_text("[1, 2]")
    with pytest.raises(RunFileError, match=r"summary.json: expected a JSON object, got list"):
        folder.read_summary()
    folder.config_path.write_text("model: [unclosed\n")
    with pytest.raises(RunFileError, match=r"config.yaml: not valid YAML"):
        folder.read_config_dict()
    folder.config_path.write_text("model: {name: tiny-llama}\nmethod: {name: lora, r: 0}\n")
    with pytest.raises(ConfigError, match="method.r"):
        folder.read_config()


def test_as_base_refuses_unfinished_and_scoring_runs_and_reads_a_finished_one(tmp_path):
    run = tmp_path / "run_v0"
    shutil.copytree(FIXTURES / "run_v0", run)
    base = RunFolder(run).as_base()
    assert (base.method, base.stage, base.weights) == ("lora", "sft", run.resolve() / "adapter")
    assert base.base_name == "tiny-llama" and RunFolder(run).is_run()
    (run / "summary.json").unlink()
    with pytest.raises(RunNotFound, match=r"not a finished run \(no summary.json or adapter/\)"):
        RunFolder(run).as_base()
    text = (run / CONFIG_FILE).read_text()
    (run / CONFIG_FILE).write_text(text.replace("stage: sft", "stage: classify"))
    with pytest.raises(RunNotFound, match="a classify run scores text and cannot be the base of another run"):
        RunFolder(run).as_base()


def test_base_name_prefers_the_recorded_absolute_path_when_the_relative_name_is_gone(tmp_path):
    folder = RunFolder(tmp_path)
    elsewhere = tmp_path / "pretrain-run"
    elsewhere.mkdir()
    folder.write_info({"base_chain": [{"run": str(elsewhere)}]})
    assert folder.base_name("runs/pretrain-run") == str(elsewhere)  # relative name does not resolve from here
    folder.write_info({})
    assert folder.base_name("runs/pretrain-run") == "runs/pretrain-run"
