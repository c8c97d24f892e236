"""POST /api/estimate: the New-job form's memory/time estimate, validated exactly like a job."""

from __future__ import annotations

from tests.studio.conftest import RECORDS, upload
from tunelab.config import ConfigError
from tunelab.config.loader import apply_overrides, build_config
from tunelab.methods import count_parameters, get_method
from tunelab.models import load_model

GOOD = {"model.name": "tiny-llama", "data.train": "datasets/hello.json", "method.name": "lora", "method.r": "4",
        "train.epochs": "2", "train.batch_size": "2", "data.max_length": "64"}


def estimate(client, device: str = "cpu", **changes):
    r = client.post("/api/estimate", json={"name": "est", "values": {**GOOD, **changes}, "device": device})
    assert r.status_code == 200, r.text
    return r.json()


def test_estimate_returns_params_memory_and_time(client, alpaca_bytes):
    upload(client, "hello.json", alpaca_bytes)
    est = estimate(client)
    cfg = build_config(apply_overrides({}, [f"{k}={v}" for k, v in GOOD.items()]))
    real = get_method("lora").apply(load_model("tiny-llama"), cfg.method)
    trainable, total = count_parameters(real)
    assert (est["params"]["trainable"], est["params"]["total"]) == (trainable, total)
    held_out = int(len(RECORDS) * 0.15)
    assert est["time"]["train_samples"] == len(RECORDS) - held_out  # counted from the uploaded file
    assert est["time"]["steps"] == 2 * -(-(len(RECORDS) - held_out) // 2)
    assert est["time"]["seconds"] > 0 and est["memory"]["total_gib"] > 0
    assert est["text"].startswith(f"params: {total:,} total, {trainable:,} trainable")


def test_memory_grows_with_batch_and_shrinks_with_checkpointing(client, alpaca_bytes):
    upload(client, "hello.json", alpaca_bytes)
    small = estimate(client, **{"train.batch_size": "1"})["memory"]
    big = estimate(client, **{"train.batch_size": "8"})["memory"]
    ckpt = estimate(client, **{"train.batch_size": "8", "train.gradient_checkpointing": True})["memory"]
    assert big["activations_bytes"] == 8 * small["activations_bytes"]
    assert big["total_bytes"] > small["total_bytes"]
    assert ckpt["total_bytes"] < big["total_bytes"]


def test_malformed_config_gets_the_cli_error_lines(client, alpaca_bytes):
    upload(client, "hello.json", alpaca_bytes)
    values = {**GOOD, "method.r": "0", "train.lerning_rate": "1e-4"}
    r = client.post("/api/estimate", json={"name": "x", "values": values})
    assert r.status_code == 422
    overrides = [f"{k}={v}" for k, v in values.items()] + ["output_dir=runs/x"]
    try:
        build_config(apply_overrides({}, overrides), "form")
        raise AssertionError("expected a ConfigError")
    except ConfigError as e:
        assert sorted(r.json()["problems"]) == sorted(e.problems)
    assert r.json()["fields"]["method.r"] == ["method.r: input should be greater than 0 (got 0)"]


def test_unknown_device_and_outside_paths_are_refused(client, alpaca_bytes):
    upload(client, "hello.json", alpaca_bytes)
    r = client.post("/api/estimate", json={"name": "x", "values": GOOD, "device": "tpu"})
    assert r.status_code == 400 and "device: unknown device kind 'tpu'" in r.json()["error"]
    r = client.post("/api/estimate", json={"name": "x", "values": {**GOOD, "data.train": "/etc/passwd"}})
    assert r.status_code == 422 and r.json()["problems"][0].startswith("data.train:")
