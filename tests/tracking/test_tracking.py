"""Each tracker logs a config and a few steps offline into the run folder; read back with the package's own reader."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from tunelab.tracking import make_tracker

# as the engine passes it: a model_dump() that may hold paths and None
CONFIG = {"model": {"name": "tiny-llama"}, "train": {"lr": 2e-4, "max_steps": 3}, "method": {"name": "lora"},
          "data": {"eval": None}, "output_dir": Path("runs/demo")}
PLAIN = {**CONFIG, "output_dir": "runs/demo"}
STEPS = {1: {"loss": 2.0, "lr": 1e-4}, 2: {"loss": 1.5, "lr": 2e-4, "note": "text is skipped"},
         3: {"loss": 1.25, "eval_loss": 1.75}}


def _log_run(name, run_dir):
    tracker = make_tracker(name)
    tracker.start(run_dir, CONFIG)
    for step, metrics in STEPS.items():
        tracker.log(metrics, step)
    tracker.finish()


def test_tensorboard_event_file(tmp_path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    _log_run("tensorboard", tmp_path)
    acc = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == {"loss", "lr", "eval_loss"}
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(1, 2.0), (2, 1.5), (3, 1.25)]
    assert [(e.step, e.value) for e in acc.Scalars("eval_loss")] == [(3, 1.75)]
    (text,) = acc.Tensors("config/text_summary")
    config_text = text.tensor_proto.string_val[0].decode()
    assert '"name": "tiny-llama"' in config_text and '"output_dir": "runs/demo"' in config_text


def test_mlflow_local_store(tmp_path):
    mlflow = pytest.importorskip("mlflow")
    from tunelab.tracking.mlflow import tracking_uri

    _log_run("mlflow", tmp_path)
    client = mlflow.MlflowClient(tracking_uri=tracking_uri(tmp_path))
    exp = client.get_experiment_by_name("tunelab")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == tmp_path.name
    assert run.data.params["train.lr"] == "0.0002" and run.data.params["model.name"] == "tiny-llama"
    history = client.get_metric_history(run.info.run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 2.0), (2, 1.5), (3, 1.25)]
    assert run.data.metrics["eval_loss"] == 1.75 and "note" not in run.data.metrics
    assert run.info.artifact_uri.startswith((tmp_path / "mlruns").as_uri())
    with open(client.download_artifacts(run.info.run_id, "config.json", str(tmp_path))) as f:
        assert json.load(f) == PLAIN
    assert run.data.params["output_dir"] == "runs/demo" and run.data.params["data.eval"] == "None"


def _leveldb_log_records(path):
    """Records of a W&B .wandb file: a 7-byte file header, then LevelDB log format
    (32 KiB blocks; each chunk has crc32, length, type FULL=1/FIRST=2/MIDDLE=3/LAST=4).
    wandb 0.31 no longer ships a Python reader for it, so the test reads it itself."""
    data, pos, buf, out = path.read_bytes(), 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # block trailer padding
            pos += 32768 - pos % 32768
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos: pos + 7])
        chunk, pos = data[pos + 7: pos + 7 + length], pos + 7 + length
        if kind == 1:
            out.append(chunk)
        elif kind in (2, 3):
            buf = (b"" if kind == 2 else buf) + chunk
        elif kind == 4:
            out.append(buf + chunk)
    return out


def _wandb_records_when_complete(path, pb2, timeout_s: float = 30.0):
    """W&B's writer process may still be flushing after finish() returns on a loaded machine:
    wait (bounded) until the run's closing 'exit' record is on disk."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        records = _leveldb_log_records(path)
        kinds = []
        for data in records:
            rec = pb2.Record()
            rec.ParseFromString(data)
            kinds.append(rec.WhichOneof("record_type"))
        if "exit" in kinds or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def test_wandb_offline_run_files(tmp_path):
    pytest.importorskip("wandb")
    from wandb.proto import wandb_internal_pb2

    _log_run("wandb", tmp_path)
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    history, config = [], {}
    records = _wandb_records_when_complete(next(run_dir.glob("run-*.wandb")), wandb_internal_pb2)
    for data in records:
        rec = wandb_internal_pb2.Record()
        rec.ParseFromString(data)
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            history.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item})
        elif kind in ("run", "config"):
            updates = rec.run.config.update if kind == "run" else rec.config.update
            config.update({i.key: json.loads(i.value_json) for i in updates})
    assert [(h["_step"], h["loss"]) for h in history if "loss" in h] == [(1, 2.0), (2, 1.5), (3, 1.25)]
    assert [(h["_step"], h["eval_loss"]) for h in history if "eval_loss" in h] == [(3, 1.75)]
    assert not any("note" in h for h in history)
    assert config["train"] == {"lr": 2e-4, "max_steps": 3} and config["model"] == {"name": "tiny-llama"}
    assert config["output_dir"] == "runs/demo" and config["data"] == {"eval": None}


def test_swanlab_offline_log(tmp_path):
    pytest.importorskip("swanlab")
    import yaml
    from swanlab.proto.swanlab.record.v1.record_pb2 import Record
    from swanlab.sdk.internal.core_python.store import DataStoreReader

    _log_run("swanlab", tmp_path)
    (run_dir,) = (tmp_path / "swanlog").glob("run-*")
    config = yaml.safe_load((run_dir / "files" / "config.yaml").read_text())
    assert config["train"]["value"] == {"lr": 2e-4, "max_steps": 3}
    assert config["output_dir"]["value"] == "runs/demo"
    reader = DataStoreReader()
    reader.open(next(run_dir.glob("run-*.swanlab")))
    scalars = []
    for data in reader:
        rec = Record()
        rec.ParseFromString(data)
        if rec.WhichOneof("record_type") == "scalar":
            scalars.append((rec.scalar.key, rec.scalar.step, rec.scalar.value.number))
    reader.close()
    assert [(s, v) for k, s, v in scalars if k == "loss"] == [(1, 2.0), (2, 1.5), (3, 1.25)]
    assert ("eval_loss", 3, 1.75) in scalars and not any(k == "note" for k, _, _ in scalars)
