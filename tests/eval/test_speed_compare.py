"""Inference speed and cost beside the base-vs-tuned comparison (`tunelab eval --compare --speed-samples`)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

import tunelab
from tunelab.eval import speed as speed_mod
from tunelab.infer.generate import Answer


def test_measure_speed_against_a_fake_clock(monkeypatch):
    answers = iter([Answer("warm", True, 1), Answer("a", True, 3), Answer("b", False, 8), Answer("c", True, 5),
                    Answer("d", True, 1)])
    monkeypatch.setattr(speed_mod, "generate_answers", lambda *a, **k: [next(answers)])
    ticks = iter([0.0, 0.5, 1.0, 2.0, 2.0, 2.2, 3.0, 3.1])  # latencies 0.5, 1.0, 0.2, 0.1
    summary, rows = speed_mod.measure_speed(None, None, "", [[{"role": "user", "content": str(i)}] for i in range(9)],
                                            samples=4, clock=lambda: next(ticks))
    assert [r["latency_s"] for r in rows] == pytest.approx([0.5, 1.0, 0.2, 0.1])
    assert [r["tokens"] for r in rows] == [4, 8, 6, 2]  # a stop token counts; a cut-off answer has none
    assert summary["latency_p50_s"] == pytest.approx(np.percentile([0.5, 1.0, 0.2, 0.1], 50))
    assert summary["latency_p95_s"] == pytest.approx(np.percentile([0.5, 1.0, 0.2, 0.1], 95))
    assert summary["tokens_per_s"] == pytest.approx(20 / 1.8) and summary["ms_per_token"] == pytest.approx(90.0)
    assert summary["speed_samples"] == 4
    with pytest.raises(ValueError, match="no prompts to time"):
        speed_mod.measure_speed(None, None, "", [])


@pytest.fixture(scope="module")
def run(tmp_path_factory, shared_data):
    root = tmp_path_factory.mktemp("speed")
    cfg = {"model": {"name": "tiny-llama"},
           "data": {"train": str(shared_data / "fudan_news_train.jsonl"), "max_samples": 8, "max_length": 96,
                    "val_size": 0.0},
           "method": {"name": "lora", "r": 4, "alpha": 8},
           "train": {"max_steps": 1, "batch_size": 4, "lr": 1e-3, "seed": 0, "report": False},
           "output_dir": str(root / "run")}
    data = root / "val.jsonl"
    data.write_text("\n".join((shared_data / "fudan_news_val.jsonl").read_text(encoding="utf-8")
                              .splitlines()[:4]) + "\n", encoding="utf-8")
    return tunelab.train(cfg, progress=False), data


def test_compare_times_both_systems_in_one_process(run, tmp_path):
    from tunelab.cli import app
    from tunelab.eval.report import write_report

    r, data = run
    res = CliRunner().invoke(app, ["eval", str(r.path), "--data", str(data), "--compare", "base",
                                   "--max-new-tokens", "3", "--speed-samples", "3"])
    assert res.exit_code == 0, res.output
    assert "tokens_per_s" in res.output and "latency_p95_s" in res.output
    record = json.loads(sorted((r.path / "eval").glob("*-vs-*.json"))[-1].read_text(encoding="utf-8"))
    ours, theirs = record["metrics"], record["compare"]["metrics"]
    assert record["speed"]["samples"] == 3
    for who, metrics in (("this", ours), ("other", theirs)):
        timings = record["speed"][who]
        lat = [t["latency_s"] for t in timings]
        assert len(timings) == 3 and all(t > 0 for t in lat)
        assert metrics["latency_p50_s"] == pytest.approx(np.percentile(lat, 50))
        assert metrics["latency_p50_s"] <= metrics["latency_p95_s"] <= max(lat)
        assert metrics["tokens_per_s"] == pytest.approx(sum(t["tokens"] for t in timings) / sum(lat))
        assert metrics["ms_per_token"] == pytest.approx(1000 / metrics["tokens_per_s"])
    assert record["compare"]["deltas"]["tokens_per_s"] == pytest.approx(ours["tokens_per_s"] - theirs["tokens_per_s"])
    assert list(ours)[-1] == "n"
    html = write_report(r.path).read_text(encoding="utf-8")
    assert "tokens_per_s" in html and "latency_p95_s" in html


def test_speed_is_off_without_compare_and_checked(run):
    from tunelab.cli import app

    r, data = run
    res = CliRunner().invoke(app, ["eval", str(r.path), "--data", str(data), "--max-new-tokens", "2", "--limit", "2"])
    assert res.exit_code == 0 and "tokens_per_s" not in res.output
    res = CliRunner().invoke(app, ["eval", str(r.path), "--data", str(data), "--speed-samples", "-1"])
    assert res.exit_code != 0 and "--speed-samples" in res.output
