"""The guided flow's API: presets are the shipped example files and validate; recommendations follow the
model and device; the fit check warns with fixes that do fit; job progress and overfitting are read from
the log and metrics; the run diff names exactly the keys that differ."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tests.studio.conftest import upload
from tunelab.cli import app
from tunelab.studio import guide, watch

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("pid", list(guide.PRESETS))
def test_preset_is_the_example_file_and_validates_with_the_cli(pid, monkeypatch):
    example = REPO / "examples" / "presets" / f"{pid}.yaml"
    assert (guide.PRESETS_DIR / f"{pid}.yaml").read_bytes() == example.read_bytes()
    monkeypatch.chdir(REPO)
    result = CliRunner().invoke(app, ["config", "show", str(example)])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(example.read_text())["method"]["name"] in result.output


def test_presets_route_drops_data_paths_and_validates_on_a_library_file(client, alpaca_bytes):
    upload(client, "a.json", alpaca_bytes)
    presets = client.get("/api/presets").json()
    assert [p["title"] for p in presets] == list(guide.PRESETS.values())
    for p in presets:
        assert "train" not in p["config"].get("data", {}) and "output_dir" not in p["config"]
        cfg = {**p["config"], "model": {"name": "tiny-llama"}, "data": {**p["config"].get("data", {}),
                                                                       "train": "datasets/a.json"}}
        r = client.post("/api/config/validate", json={"name": p["id"], "config": cfg})
        assert r.status_code == 200, (p["id"], r.json())


def test_recommend_and_model_facts(client):
    r = client.get("/api/recommend", params={"model": "tiny-llama", "method": "lora", "device": "cpu",
                                             "p95_tokens": 90}).json()
    assert r["model"]["params"] == 3219776 and r["model"]["context"] == 2048
    assert r["values"]["method.r"]["value"] == 8 and r["values"]["data.max_length"]["value"] == 128
    full = client.get("/api/recommend", params={"model": "tiny-llama", "method": "full", "device": "cuda"}).json()
    assert full["values"]["train.lr"]["value"] == 2e-5 and "method.r" not in full["values"]
    bad = client.get("/api/recommend", params={"model": "/etc", "method": "lora"})
    assert bad.status_code == 400 and "outside the studio's folders" in bad.json()["error"]


def test_fit_check_warns_and_each_batch_fix_fits(client, alpaca_bytes):
    upload(client, "a.json", alpaca_bytes)
    cfg = {"model": {"name": "tiny-llama"}, "method": {"name": "full"},
           "data": {"train": "datasets/a.json", "max_length": 1024}, "train": {"batch_size": 16}}
    fits = client.post("/api/estimate", json={"config": cfg, "device": "cpu"}).json()["fit"]
    assert fits["fits"] and fits["fixes"] == []
    need = fits["need_gib"]
    fit = client.post("/api/estimate", json={"config": cfg, "device": "cpu", "memory_gib": need / 2}).json()["fit"]
    assert not fit["fits"] and fit["budget_gib"] == round(need / 2, 2)
    batch = next(f for f in fit["fixes"] if "train.batch_size" in f["values"])
    cfg["train"].update({k.split(".")[1]: int(v) for k, v in batch["values"].items()})
    again = client.post("/api/estimate", json={"config": cfg, "device": "cpu", "memory_gib": need / 2}).json()["fit"]
    assert again["fits"]  # the suggested batch really fits
    assert cfg["train"]["batch_size"] * cfg["train"]["grad_accum"] == 16  # and keeps the effective batch


LOG = """lora on tiny-llama: 16,384 trainable
speed: chunked_ce; off: fused_lora (auto: cpu (on for CUDA)); fused_adamw (cpu)
step 1/6  ep 0.05  loss 10.8063  lr 2.00e-04  gn 0.44  843 tok/s  0.9 GiB  ETA 3s
step 6/6  ep 0.32  loss 10.7922  lr 1.34e-05  gn 0.65  1,565 tok/s  1.2 GiB  ETA 0s
"""


def test_train_progress_from_the_log():
    p = watch.train_progress(LOG, [], "running")
    assert (p["step"], p["total"], p["percent"], p["eta_s"]) == (6, 6, 100.0, 0)
    assert p["tokens_per_s"] == 1565 and p["memory_gib"] == 1.2 and p["memory_kind"] == "CPU RSS"
    assert p["speed_on"] == ["chunked_ce"] and p["speed_off"]["fused_adamw"] == "cpu"
    assert p["phase"] == "final evaluation and saving"  # last step logged, no done line yet
    done = watch.train_progress(LOG + "done: 6 steps\n", [{"step": 6, "mem_gib": 3.5}], "completed")
    assert done["memory_kind"] == "GPU peak" and done["memory_gib"] == 3.5 and done["phase"] == "completed"
    assert watch.eval_progress("eval 1/2: scoring the run on x\neval 2/2: scoring base on x", "running") == \
        {"phase": "scoring base on x", "done": 1, "total": 2}


def test_overfitting_mark_from_metrics():
    rows = [{"step": s, "loss": 2.0 - 0.1 * s} for s in range(1, 13)]
    rows += [{"step": 3, "eval_loss": 1.0}, {"step": 6, "eval_loss": 1.1}, {"step": 9, "eval_loss": 1.2},
             {"step": 12, "eval_loss": 1.3}]
    mark = watch.overfitting(rows)
    assert mark["step"] == 9 and "eval_loss rose 2 evaluations" in mark["reason"]
    assert watch.overfitting(rows[:12]) is None


def test_run_diff_names_the_keys_that_differ(client, settings):
    from tunelab.config import build_config

    for name, lr in (("a", 2e-4), ("b", 1e-3)):
        run = settings.runs / name
        run.mkdir()
        cfg = build_config({"model": {"name": "tiny-llama"}, "data": {"train": "x.json"}, "train": {"lr": lr},
                            "output_dir": f"runs/{name}"})
        (run / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")), encoding="utf-8")
    d = client.get("/api/runs/diff", params={"a": "a", "b": "b"}).json()
    assert d["rows"] == [{"key": "train.lr", "a": 2e-4, "b": 1e-3}]
    assert "-  lr: 0.0002" in d["unified"] and "+  lr: 0.001" in d["unified"]
    assert client.get("/api/runs/diff", params={"a": "a", "b": "../../etc"}).status_code in (400, 404)


SMALL = ["model.name=tiny-llama", "data.max_samples=8", "data.max_length=64", "data.val_size=0.0", "data.eval=null",
         "train.max_steps=1", "train.batch_size=2", "train.grad_accum=1", "train.eval_every=null", "train.report=false",
         "train.device=cpu"]


@pytest.mark.parametrize("pid", [p for p in guide.PRESETS if p != "qlora-24gb"])  # qlora: CUDA + bitsandbytes
def test_preset_trains_one_step_through_the_cli(pid, tmp_path, shared_data, monkeypatch):
    monkeypatch.chdir(REPO)  # the presets' data paths are relative to the repository root, like every example
    out = tmp_path / pid
    args = ["train", str(REPO / "examples" / "presets" / f"{pid}.yaml"), *SMALL, f"output_dir={out}", "--quiet"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    import json

    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 1 and summary["train_loss"] > 0
    assert yaml.safe_load((out / "config.yaml").read_text())["method"]["name"] == \
        yaml.safe_load((REPO / "examples" / "presets" / f"{pid}.yaml").read_text())["method"]["name"]


def test_model_facts_of_a_folder_under_a_model_root(client, settings):
    from tunelab.models.tiny import tiny_config

    tiny_config("tiny-llama").save_pretrained(settings.model_roots[0] / "my-model")
    models = {m["name"]: m for m in client.get("/api/models").json()}
    mine = next(m for name, m in models.items() if name.endswith("my-model"))
    assert mine["kind"] == "hf_dir" and mine["params"] == models["tiny-llama"]["params"] == 3219776
    assert mine["context"] == 2048 and mine["disk_bytes"] > 0
    assert [m["name"] for m in client.get("/api/models", params={"facts": False}).json()] == list(models)
