"""MLflow tracker, local: runs in `<run>/mlflow.db` (SQLite), artifacts in `<run>/mlruns`.

`mlflow ui --backend-store-uri sqlite:///<run>/mlflow.db` shows it. MLflow 3 put the plain
file store (`file:./mlruns`) in maintenance mode and refuses it unless MLFLOW_ALLOW_FILE_STORE
is set, so we use its recommended local backend instead; it needs no server or network.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from tunelab.tracking.values import plain, scalars

MAX_PARAM_CHARS = 6000  # MLflow rejects longer parameter values


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> {"train.lr": "0.0002", ...}: MLflow parameters are flat strings."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(flatten(value, name))
        else:
            out[name] = str(value)[:MAX_PARAM_CHARS]
    return out


def tracking_uri(run_dir: str | Path, db: str = "mlflow.db") -> str:
    """The SQLite tracking URI of a run folder, for MlflowClient(tracking_uri=...) or `mlflow ui`."""
    return f"sqlite:///{Path(run_dir).resolve() / db}"


class MlflowTracker:
    """Logs the flattened config as parameters and metrics per step, through an explicit client.

    The client is bound to this run's file store, so nothing global (mlflow.set_tracking_uri,
    the active run) is changed in the training process.
    """

    def __init__(self, experiment: str = "tunelab", db: str = "mlflow.db", artifacts: str = "mlruns"):
        self.experiment, self.db, self.artifacts = experiment, db, artifacts
        self._client: MlflowClient | None = None
        self._run_id: str | None = None

    def start(self, run_dir: Path, config: dict[str, Any]) -> None:
        run_dir = Path(run_dir).resolve()
        self._client = MlflowClient(tracking_uri=tracking_uri(run_dir, self.db))
        exp = self._client.get_experiment_by_name(self.experiment)
        exp_id = exp.experiment_id if exp else self._client.create_experiment(
            self.experiment, artifact_location=(run_dir / self.artifacts).as_uri())
        self._run_id = self._client.create_run(exp_id, run_name=run_dir.name).info.run_id
        config = plain(config)
        params = [Param(k, v) for k, v in flatten(config).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self._client.log_batch(self._run_id, params=params[i: i + 100])
        self._client.log_dict(self._run_id, config, "config.json")

    def log(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(k, v, now, step) for k, v in scalars(metrics).items()]
        if batch:
            self._client.log_batch(self._run_id, metrics=batch)

    def finish(self) -> None:
        if self._client is not None and self._run_id is not None:
            self._client.set_terminated(self._run_id, "FINISHED")
        self._client, self._run_id = None, None
