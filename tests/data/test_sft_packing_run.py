"""`data.packing: true` through the real CLI: one step over all samples gives the unpacked run's loss."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.data import cache as tcache


def _train(tmp_path, shared_data, name, packing, batch_size, extra_data=None):
    cfg = {"model": {"name": "tiny-llama"},
           "data": {"train": str(shared_data / "llamafactory_demo/alpaca_en_demo.json"), "max_samples": 12,
                    "max_length": 256, "val_size": 0.0, "packing": packing, **(extra_data or {})},
           "method": {"name": "full"},
           "train": {"max_steps": 1, "batch_size": batch_size, "lr": 1e-4, "report": False},
           "output_dir": str(tmp_path / name)}
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(app, ["train", str(tmp_path / f"{name}.yaml"), "--quiet"])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / name / "summary.json").read_text())
    first = json.loads((tmp_path / name / "metrics.jsonl").read_text().splitlines()[0])
    return summary, first


def test_packed_run_matches_unpacked_first_step(tmp_path, shared_data, monkeypatch):
    monkeypatch.setattr(tcache, "tokenized_root", lambda: tmp_path / "cache" / "tokenized")
    plain, plain_step = _train(tmp_path, shared_data, "plain", False, 12)
    packed, packed_step = _train(tmp_path, shared_data, "packed", True, 12)
    stats = packed["data"]["packing"]
    assert stats["samples"] == 12 and stats["packed_rows"] < 12 and stats["fill_rate"] > 0.5
    # the same 12 samples in one step: identical loss (fp32 CPU, summation order only)
    assert packed_step["loss"] == pytest.approx(plain_step["loss"], abs=1e-5)
    # tokens counted are real tokens only, padding excluded
    assert packed_step["tokens"] == plain_step["tokens"] == plain["data"]["train_tokens"]


def test_bad_records_are_skipped_and_listed_in_the_run(tmp_path, shared_data, monkeypatch):
    monkeypatch.setattr(tcache, "tokenized_root", lambda: tmp_path / "cache" / "tokenized")
    rows = json.loads((shared_data / "llamafactory_demo/alpaca_en_demo.json").read_text())[:6]
    rows.insert(2, {"instruction": "no answer here"})
    (tmp_path / "d.json").write_text(json.dumps(rows))
    cfg = {"model": {"name": "tiny-llama"}, "data": {"train": str(tmp_path / "d.json"), "val_size": 0.0,
                                                     "max_length": 64, "skip_invalid": True},
           "method": {"name": "full"}, "train": {"max_steps": 1, "batch_size": 2, "report": False},
           "output_dir": str(tmp_path / "run")}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(app, ["train", str(tmp_path / "c.yaml")])
    assert res.exit_code == 0, res.output
    assert "1 invalid records skipped" in " ".join(res.output.split())
    (reject,) = [json.loads(x) for x in (tmp_path / "run" / "rejected.jsonl").read_text().splitlines()]
    assert reject["where"] == f"{tmp_path / 'd.json'}[2]"
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["data"]["rejected"] == 1
