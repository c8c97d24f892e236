"""End to end through the real CLI on a tiny model: train -> run folder -> chat / eval read it back."""

import json

import pytest
import torch
import yaml
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.data.templates import NAMED_TEMPLATES
from tunelab.run import Run, RunNotFound


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shared_data):
    root = tmp_path_factory.mktemp("run")
    cfg = {"model": {"name": "tiny-qwen2", "chat_template": "alpaca"},
           "data": {"train": str(shared_data / "llamafactory_demo/alpaca_en_demo.json"), "max_samples": 40,
                    "max_length": 96, "val_size": 0.2},
           "method": {"name": "lora", "r": 4, "alpha": 8},
           "train": {"max_steps": 4, "batch_size": 4, "lr": 1e-3, "eval_every": 2, "save_every": 2,
                     "report_to": ["tensorboard"]},
           "output_dir": str(root / "r")}
    (root / "c.yaml").write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(app, ["train", str(root / "c.yaml"), "train.seed=3", "--quiet"])
    assert res.exit_code == 0, res.output
    return root, Run(root / "r")


def test_run_folder_contents(trained):
    root, run = trained
    p = run.path
    for f in ("config.yaml", "run.json", "summary.json", "metrics.jsonl", "chat_template.jinja",
              "adapter/adapter_config.json", "adapter/adapter_model.safetensors", "tokenizer/tokenizer.json"):
        assert (p / f).is_file(), f
    assert run.config.train.seed == 3  # the override is in the stored config
    assert run.summary["steps"] == 4 and run.summary["stopped"] == "max_steps"
    assert run.summary["data"]["train_samples"] == 32 and run.summary["data"]["val_samples"] == 8
    info = run.info
    assert info["method"] == "lora" and 0 < info["trainable_params"] < info["total_params"]
    train_rows = [m for m in run.metrics() if "loss" in m]
    eval_rows = [m for m in run.metrics() if "eval_loss" in m]
    assert [m["step"] for m in train_rows] == [1, 2, 3, 4]
    assert all(m["tokens_per_s"] > 0 and m["grad_norm"] > 0 for m in train_rows)
    assert [m["step"] for m in eval_rows] == [2, 4]
    assert [c.name for c in sorted((p / "checkpoints").iterdir())] == ["step-000002"]


def test_report_and_tracker_written_at_the_end(trained):
    _, run = trained
    html = (run.path / "report.html").read_text()
    assert "<svg" in html and "tiny-qwen2" in html
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run.path / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("loss")] == [1, 2, 3, 4]
    losses = [m["loss"] for m in run.metrics() if "loss" in m]
    assert [e.value for e in acc.Scalars("loss")] == pytest.approx(losses, rel=1e-6)


def test_template_travels_with_the_run(trained):
    _, run = trained
    assert run.chat_template == NAMED_TEMPLATES["alpaca"]
    model, tok, template = run.load_model()
    assert template == NAMED_TEMPLATES["alpaca"]
    from tunelab.data.templates import prompt_ids

    text = tok.decode(prompt_ids(tok, template, [{"role": "user", "content": "hi"}]))
    assert text == "### Instruction:\nhi\n\n### Response:\n"


def test_reloaded_run_has_the_trained_adapter(trained):
    _, run = trained
    model, tok, _ = run.load_model()
    from tunelab.models import load_model

    x = torch.tensor([[1, 200, 300, 400]])
    base = load_model("tiny-qwen2")
    assert not torch.allclose(model(input_ids=x).logits, base(input_ids=x).logits)


def test_cli_chat_once_and_eval(trained, shared_data):
    root, run = trained
    runner = CliRunner()
    res = runner.invoke(app, ["chat", str(run.path), "--prompt", "hello", "--max-new-tokens", "4"])
    assert res.exit_code == 0, res.output
    data = shared_data / "llamafactory_demo/alpaca_en_demo.json"
    res = runner.invoke(app, ["eval", str(run.path), "--data", str(data), "--limit", "3", "--max-new-tokens", "4"])
    assert res.exit_code == 0, res.output
    saved = sorted((run.path / "eval").glob("alpaca_en_demo-*.json"))
    assert len(saved) == 1
    result = json.loads(saved[0].read_text())
    assert result["n"] == 3 and set(result["metrics"]) >= {"loss", "perplexity", "exact_match", "contains"}
    assert result["metrics"]["perplexity"] == pytest.approx(2.718281828 ** result["metrics"]["loss"], rel=1e-6)
    preds = saved[0].with_suffix(".predictions.jsonl").read_text().splitlines()
    assert len(preds) == 3 and json.loads(preds[0])["reference"]


def test_refuses_to_overwrite_and_resumes(trained):
    root, run = trained
    res = CliRunner().invoke(app, ["train", str(root / "c.yaml"), "--quiet"])
    assert res.exit_code == 2 and "already holds a finished run" in res.output


def test_bad_inputs_are_one_clear_line(tmp_path):
    runner = CliRunner()
    bad = tmp_path / "d.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": 3, "output": "b"}\n')
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"name": "tiny-llama"}, "data": {"train": str(bad)},
                                   "output_dir": str(tmp_path / "out")}))
    res = runner.invoke(app, ["train", str(cfg), "--quiet"])
    assert res.exit_code == 2
    assert f"{bad}:2: field 'instruction' must be a string" in res.output
    res = runner.invoke(app, ["train", str(cfg), "model.name=no/such-model", "--quiet"])
    assert res.exit_code == 2 and "never downloads" in res.output
    with pytest.raises(RunNotFound, match="not a tunelab run folder"):
        Run(tmp_path)


def test_export_merged_equals_the_unmerged_run(trained, tmp_path):
    from transformers import AutoModelForCausalLM

    _, run = trained
    res = CliRunner().invoke(app, ["export", str(run.path), "--format", "merged", "--out", str(tmp_path / "m")])
    assert res.exit_code == 0, res.output
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "chat_template.jinja").read_text() == run.chat_template
    model, _, _ = run.load_model()
    x = torch.tensor([[1, 200, 300, 400, 500]])
    torch.testing.assert_close(merged(input_ids=x).logits, model(input_ids=x).logits, rtol=1e-4, atol=1e-5)
    res = CliRunner().invoke(app, ["export", str(run.path), "--format", "gguff"])
    assert res.exit_code == 2 and "did you mean" in res.output


def test_serve_a_run_folder_answers_like_the_run(trained):
    from fastapi.testclient import TestClient

    from tunelab.cli.serve import spec_from_run
    from tunelab.infer.generate import generate
    from tunelab.infer.server import create_app

    _, run = trained
    spec = spec_from_run(run.path)
    assert spec.name == run.path.name and spec.adapter_dir.endswith("adapter")
    assert spec.chat_template == run.chat_template
    model, tok, template = run.load_model()
    expected = generate(model, tok, template, [[{"role": "user", "content": "hello"}]], max_new_tokens=6)[0]
    with TestClient(create_app([spec])) as client:
        res = client.post("/v1/chat/completions", json={
            "model": spec.name, "max_tokens": 6, "temperature": 0,
            "messages": [{"role": "user", "content": "hello"}]})
    assert res.status_code == 200, res.text
    assert res.json()["choices"][0]["message"]["content"].strip() == expected


def test_cli_resume_keeps_one_metric_line_per_step(tmp_path, shared_data):
    """Resuming rewrites metrics.jsonl in place, so steps after the checkpoint are logged, once."""
    cfg = {"model": {"name": "tiny-llama"},
           "data": {"train": str(shared_data / "llamafactory_demo/alpaca_en_demo.json"), "max_samples": 16,
                    "max_length": 64, "val_size": 0},
           "method": {"name": "lora", "r": 2, "alpha": 4},
           "train": {"max_steps": 4, "batch_size": 4, "save_every": 2, "report": False},
           "output_dir": str(tmp_path / "r")}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    runner = CliRunner()
    assert runner.invoke(app, ["train", str(tmp_path / "c.yaml"), "--quiet"]).exit_code == 0
    # pretend the run died after step 3: drop its end products, keep checkpoint 2 and lines up to step 3
    for name in ("summary.json",):
        (tmp_path / "r" / name).unlink()
    import shutil

    shutil.rmtree(tmp_path / "r" / "adapter")
    lines = (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
    (tmp_path / "r" / "metrics.jsonl").write_text("\n".join(lines[:3]) + "\n")
    res = runner.invoke(app, ["train", str(tmp_path / "c.yaml"), "train.resume=auto", "--quiet"])
    assert res.exit_code == 0, res.output
    steps = [json.loads(line)["step"] for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_cli_generate_writes_predictions_for_prompt_only_records(trained, tmp_path):
    _, run = trained
    data = tmp_path / "prompts.jsonl"
    data.write_text('{"instruction": "Say hi"}\n{"instruction": "Name a color", "output": "red"}\n')
    out = tmp_path / "preds.jsonl"
    res = CliRunner().invoke(app, ["generate", str(run.path), "--data", str(data), "--out", str(out),
                                   "--max-new-tokens", "5"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["Say hi", "Name a color"]
    assert [r["reference"] for r in rows] == [None, "red"]
    from tunelab.infer.generate import generate

    model, tok, template = run.load_model()
    expected = generate(model, tok, template, [[{"role": "user", "content": "Say hi"}]], max_new_tokens=5)
    assert rows[0]["prediction"] == expected[0]
