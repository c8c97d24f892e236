"""The job queue: SQLite persistence, restart recovery, and real `tunelab train` workers (cancel, resume, chat)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from fastapi.testclient import TestClient

from tests.studio.conftest import upload, wait_for
from tunelab.studio.app import create_app
from tunelab.studio.jobs import JobRunner
from tunelab.studio.store import JobStore

VALUES = {"model.name": "tiny-llama", "data.train": "datasets/hello.json", "method.name": "lora",
          "train.batch_size": "2", "data.max_length": "64", "train.report": False}


def _queue(client, name: str, **extra) -> dict:
    r = client.post("/api/jobs", json={"name": name, "values": {**VALUES, **extra}})
    assert r.status_code == 200, r.text
    return r.json()


def test_jobs_persist_and_restart_marks_dead_workers_interrupted(settings, alpaca_bytes):
    with TestClient(create_app(settings, start_worker=False)) as c:
        upload(c, "hello.json", alpaca_bytes)
        a = _queue(c, "a")
        b = _queue(c, "a")  # same name: a free run folder is picked
        assert b["run"] == "a-2" and yaml.safe_load(b["yaml"])["output_dir"] == "runs/a-2"
        assert c.post(f"/api/jobs/{b['id']}/cancel").json()["status"] == "cancelled"
    # a worker that died while the studio was down, with a checkpoint on disk
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    store = JobStore(settings.db)
    store.update(a["id"], status="running", pid=dead.pid)
    ckpt = settings.runs / "a" / "checkpoints" / "step-000002"
    ckpt.mkdir(parents=True)
    with TestClient(create_app(settings, start_worker=False)) as c:
        jobs = {j["id"]: j for j in c.get("/api/jobs").json()}
    assert jobs[a["id"]]["status"] == "interrupted"
    assert jobs[a["id"]]["checkpoint"] == str(ckpt)
    assert str(ckpt) in jobs[a["id"]]["message"]
    assert jobs[b["id"]]["status"] == "cancelled"


def test_restart_keeps_watching_a_live_worker(settings, alpaca_bytes):
    with TestClient(create_app(settings, start_worker=False)) as c:
        upload(c, "hello.json", alpaca_bytes)
        job = _queue(c, "live")
    runner = JobRunner(settings, JobStore(settings.db))
    cfg = runner.config_path(job["id"])
    # stands in for a worker that outlived the studio: its command line names the job's config
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", str(cfg)])
    try:
        runner.store.update(job["id"], status="running", pid=proc.pid)
        runner.recover()
        assert runner.store.get(job["id"])["status"] == "running"
        runner.store.update(job["id"], pid=proc.pid + 10**6)  # a pid that is not this job's worker
        runner.recover()
        assert runner.store.get(job["id"])["status"] == "interrupted"
        runner.store.update(job["id"], status="running", pid=proc.pid)
        proc.kill()
        proc.wait()
        runner.tick()
        assert runner.store.get(job["id"])["status"] == "interrupted"
    finally:
        proc.kill()


def _job(c, job_id):
    return c.get(f"/api/jobs/{job_id}").json()


def _metrics_file(settings, run):
    lines = (settings.runs / run / "metrics.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines if x.strip()]


@pytest.mark.slow
def test_real_job_runs_cancels_resumes_and_chats(settings, alpaca_bytes):
    from tunelab.infer.generate import CHAT_REPETITION_PENALTY, generate
    from tunelab.run import Run

    with TestClient(create_app(settings)) as c:
        upload(c, "hello.json", alpaca_bytes)
        # enough steps that the cancel lands inside the training loop even on a busy machine
        job = _queue(c, "real", **{"train.max_steps": "20", "train.save_every": "1"})
        wait_for(lambda: _job(c, job["id"])["metrics"])  # the first step is logged
        assert c.post(f"/api/jobs/{job['id']}/cancel").json()["status"] == "cancelling"
        done = wait_for(lambda: (j := _job(c, job["id"]))["status"] in ("cancelled", "failed", "completed") and j)
        assert done["status"] == "cancelled", done["log"]
        assert done["returncode"] == 130 and done["checkpoint"]
        stopped_at = int(done["checkpoint"].rsplit("-", 1)[1])
        assert 1 <= stopped_at < 20

        r = c.post(f"/api/jobs/{job['id']}/resume").json()
        assert r["status"] == "queued" and r["config"]["train"]["resume"] == "auto"
        done = wait_for(lambda: (j := _job(c, job["id"]))["status"] in ("completed", "failed", "interrupted") and j)
        assert done["status"] == "completed", done["log"]
        summary = json.loads((settings.runs / "real" / "summary.json").read_text())
        assert summary["steps"] == 20
        # the resumed worker continued from the checkpoint rather than starting over
        assert f"resumed from runs/real/checkpoints/step-{stopped_at:06d} at step {stopped_at}" in done["log"]
        assert sum(m["step"] == 1 for m in _metrics_file(settings, "real") if "loss" in m) == 1

        # metrics, runs list and chat read the same run folder the CLI wrote
        assert c.get("/api/runs/real/metrics").json()["metrics"] == _metrics_file(settings, "real")
        row = next(r for r in c.get("/api/runs").json() if r["name"] == "real")
        assert row["steps"] == 20 and row["train_loss"] == summary["train_loss"]
        msgs = [{"role": "user", "content": "Say hello to friend 3"}]
        with c.stream("POST", "/api/chat", json={"run": "real", "messages": msgs, "max_new_tokens": 6}) as res:
            events = [json.loads(line[6:]) for line in res.iter_lines() if line.startswith("data: ")]
        assert events[-1] == {"done": True}
        text = "".join(e.get("text", "") for e in events)
        model, tok, tpl = Run(settings.runs / "real").load_model(device="cpu")
        assert text.strip() == generate(model, tok, tpl, [msgs], 6, repetition_penalty=CHAT_REPETITION_PENALTY)[0]

        html = c.get("/api/runs/real/report")
        assert html.status_code == 200 and "<html" in html.text.lower()
        assert c.post("/api/runs/real/export", json={"format": "zip"}).status_code == 400
        r = c.post("/api/runs/real/export", json={"format": "merged", "name": "../../escape"})
        assert r.status_code == 200 and r.json()["path"].startswith("exports/")
        assert r.json()["label"] == "safetensors model (lora adapter merged into the base)" and r.json()["merged"]
        from safetensors.torch import load_file

        out = settings.data_dir / r.json()["path"]
        files = sorted(out.glob("*.safetensors")) if out.is_dir() else [out]
        merged = {}
        for f in files:
            merged.update(load_file(f))
        ref = Run(settings.runs / "real").load_model(device="cpu", merged=True)[0].state_dict()
        key = next(k for k in merged if "q_proj" in k)
        assert (merged[key] == ref[key]).all()


def test_auth_token_is_required_when_set(tmp_path):
    from tunelab.studio.paths import Settings

    s = Settings(data_dir=tmp_path / "s", auth_token="sesame")
    with TestClient(create_app(s, start_worker=False)) as c:
        assert c.get("/api/jobs").status_code == 401
        assert c.get("/api/jobs", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert c.get("/api/jobs", headers={"Authorization": "Bearer sesame"}).status_code == 200
        r = c.get("/?token=sesame")
        assert r.status_code == 200 and c.cookies.get("studio_token") == "sesame"


def test_cli_refuses_a_public_bind_without_a_token():
    import typer
    from typer.testing import CliRunner

    from tunelab.cli.studio import studio

    app = typer.Typer()
    app.command()(studio)
    r = CliRunner().invoke(app, ["--host", "0.0.0.0"])
    assert r.exit_code == 2 and "--auth" in r.output
