"""Eval tables, run-vs-run eval comparison and eval-against-base jobs through the HTTP API."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from tests.studio.conftest import upload, wait_for
from tunelab.studio.app import create_app
from tunelab.studio.store import JobStore

CONFIG = {"model": {"name": "tiny-llama"}, "data": {"train": "datasets/hello.json"}, "method": {"name": "lora"}}


def _fake_run(settings, name: str, evals: dict[str, dict], weights: bool = True) -> Path:
    """A run folder written by hand: config.yaml, adapter/ (empty) and eval/<file>.json results."""
    run = settings.runs / name
    (run / "eval").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({**CONFIG, "output_dir": f"runs/{name}"}))
    if weights:
        (run / "adapter").mkdir()
    for i, (file, obj) in enumerate(evals.items()):
        p = run / "eval" / file
        p.write_text(json.dumps(obj) if isinstance(obj, dict) else obj)
        os.utime(p, (1_700_000_000 + i, 1_700_000_000 + i))  # file order = result order
    return run


def _result(data: str, metrics: dict, other: dict | None = None) -> dict:
    out = {"data": data, "metrics": {**metrics, "n": 5}, "settings": {"limit": None}, "n": 5}
    if other is not None:
        out["compare"] = {"name": "base:tiny-llama", "spec": "base", "metrics": {**other, "n": 5},
                          "deltas": {k: metrics[k] - other[k] for k in metrics}}
    return out


def test_eval_table_lists_every_result_with_base_deltas(client, settings):
    _fake_run(settings, "a", {
        "hello-vs-base_tiny-llama-20260101-000000.json":
            _result("datasets/hello.json", {"loss": 2.5, "exact_match": 0.4}, {"loss": 3.0, "exact_match": 0.1}),
        "other-20260101-000001.json": _result("datasets/other.jsonl", {"loss": 1.25, "rouge_l": 0.5}),
        "broken-20260101-000002.json": "{not json",
    })
    got = client.get("/api/runs/a/evals").json()
    assert [e["file"] for e in got] == ["hello-vs-base_tiny-llama-20260101-000000.json",
                                        "other-20260101-000001.json", "broken-20260101-000002.json"]
    hello, other, broken = got
    assert hello["dataset"] == "hello" and hello["n"] == 5 and hello["compare"] == "base:tiny-llama"
    # hand-computed: tuned - base
    assert {r["metric"]: (r["run"], r["other"], r["delta"]) for r in hello["rows"]} == {
        "loss": (2.5, 3.0, -0.5), "exact_match": (0.4, 0.1, pytest.approx(0.3))}
    assert other["compare"] is None and [r["other"] for r in other["rows"]] == [None, None]
    assert "unreadable" in broken["error"] and "broken-20260101-000002.json" in broken["error"]


def test_eval_table_carries_the_notes_of_a_result(client, settings):
    short = "references are short (median 2 tokens); loss/perplexity reflect the reference wording, not task success"
    _fake_run(settings, "a", {
        "labels-20260101-000000.json": _result("datasets/labels.json", {"loss": 2.5, "contains": 0.8}),
        "tasks-20260101-000001.json": _result(["datasets/qa.json", "datasets/tags.json"], {"qa/loss": 1.0}),
        "plain-20260101-000002.json": _result("datasets/plain.json", {"loss": 1.0}),
    })
    for file, extra in (("labels-20260101-000000.json", {"note": short}),
                        ("tasks-20260101-000001.json", {"tags/note": short, "qa/note": ""})):
        path = settings.runs / "a" / "eval" / file
        obj = json.loads(path.read_text())
        obj["metrics"].update(extra)
        mtime = path.stat().st_mtime
        path.write_text(json.dumps(obj))
        os.utime(path, (mtime, mtime))
    labels, tasks, plain = client.get("/api/runs/a/evals").json()
    assert labels["notes"] == [short]
    assert [r["metric"] for r in labels["rows"]] == ["loss", "contains"]  # a note is not a metric row
    assert tasks["notes"] == [f"tags: {short}"]  # per task, named; an empty note says nothing
    assert plain["notes"] == []


def test_compare_lines_up_the_latest_result_of_matching_datasets(client, settings):
    _fake_run(settings, "a", {
        "hello-20260101-000000.json": _result("datasets/hello.json", {"loss": 9.0, "exact_match": 0.0}),
        "hello-20260101-000001.json": _result("datasets/hello.json", {"loss": 2.0, "exact_match": 0.5}),
        "only-a-20260101-000002.json": _result("datasets/only-a.json", {"loss": 1.0}),
    })
    _fake_run(settings, "b", {
        "hello-vs-base-20260102-000000.json": _result("datasets/hello.json", {"loss": 1.5, "bleu4": 0.2},
                                                      {"loss": 3.0, "bleu4": 0.0}),
        "only-b-20260102-000001.json": _result("datasets/only-b.json", {"loss": 1.0}),
    })
    r = client.get("/api/runs/compare", params={"a": "a", "b": "b"}).json()
    assert r["only_a"] == ["only-a"] and r["only_b"] == ["only-b"]
    (table,) = r["datasets"]
    assert table["dataset"] == "hello" and table["a_file"] == "hello-20260101-000001.json"  # the newest of a
    assert table["rows"] == [{"metric": "loss", "a": 2.0, "b": 1.5, "diff": -0.5}]  # only metrics both have


def test_eval_endpoints_refuse_bad_input(client, settings, alpaca_bytes):
    upload(client, "hello.json", alpaca_bytes)
    _fake_run(settings, "a", {})
    _fake_run(settings, "untrained", {}, weights=False)
    assert client.get("/api/runs/nope/evals").status_code == 404
    assert client.get("/api/runs/..%2F..%2Fetc/evals").status_code == 404
    r = client.get("/api/runs/compare", params={"a": "a", "b": "../a"})
    assert r.status_code == 400 and "outside the studio's folders" in r.json()["error"]
    assert client.get("/api/runs/compare", params={"a": "a"}).status_code == 422
    for name, body, status, text in [
        ("nope", {}, 404, "no run 'nope'"),
        ("..%2F..%2Fetc", {}, 404, ""),
        ("untrained", {"dataset": "hello.json"}, 400, "no trained weights yet"),
        ("a", {"dataset": "hello.json", "metrics": ["accuracy!"]}, 400, "metrics: unknown 'accuracy!'; choose from"),
        ("a", {"dataset": "hello.json", "limit": 0}, 400, "limit: must be a positive number"),
        ("a", {"dataset": "hello.json", "max_new_tokens": 5000}, 400, "max_new_tokens: must be 1..1024"),
        ("a", {"dataset": "../../etc/passwd"}, 400, "outside the studio's folders"),
        ("a", {"dataset": "missing.json"}, 404, "no dataset 'missing.json'"),
    ]:
        r = client.post(f"/api/runs/{name}/eval", json=body)
        assert r.status_code == status and text in r.json().get("error", ""), (name, body, r.text)
    # validation data that points outside the library is refused, never read
    cfg = yaml.safe_load((settings.runs / "a" / "config.yaml").read_text())
    cfg["data"]["train"] = "/etc/passwd"
    (settings.runs / "a" / "config.yaml").write_text(yaml.safe_dump(cfg))
    r = client.post("/api/runs/a/eval", json={"dataset": None})
    assert r.status_code == 400 and "outside the studio's folders" in r.json()["error"]
    cfg["data"]["train"] = [{"path": "datasets/hello.json", "task": "a"}, {"path": "datasets/hello.json", "task": "b"}]
    (settings.runs / "a" / "config.yaml").write_text(yaml.safe_dump(cfg))
    r = client.post("/api/runs/a/eval", json={"dataset": None})
    assert r.status_code == 400 and "trains 2 tasks" in r.json()["error"]
    assert client.get("/api/jobs").json() == []  # nothing was queued
    assert not list(settings.jobs.iterdir())  # and no staging folder left behind


def test_a_queue_from_before_eval_jobs_opens_with_train_kind(tmp_path):
    db = tmp_path / "old.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, status TEXT NOT NULL, "
                "config_yaml TEXT NOT NULL, run_dir TEXT NOT NULL, pid INTEGER, returncode INTEGER, message TEXT, "
                "checkpoint TEXT, created REAL NOT NULL, started REAL, finished REAL)")
    con.execute("INSERT INTO jobs (name, status, config_yaml, run_dir, created) VALUES ('old', 'completed', '{}', "
                "'runs/old', 0)")
    con.commit()
    con.close()
    store = JobStore(db)
    assert store.get(1)["kind"] == "train"
    assert store.get(store.add("new", "{}", "runs/r", kind="eval"))["kind"] == "eval"


def _job(c, job_id):
    return c.get(f"/api/jobs/{job_id}").json()


def _finished(c, job_id):
    return wait_for(lambda: (j := _job(c, job_id))["status"] in ("completed", "failed", "interrupted") and j)


@pytest.mark.slow
def test_eval_against_base_runs_tunelab_eval_as_a_job(settings, alpaca_bytes):
    from tunelab.eval.evaluate import score_model
    from tunelab.models import load_model
    from tunelab.run import Run

    values = {"model.name": "tiny-llama", "data.train": "datasets/hello.json", "method.name": "lora",
              "train.batch_size": "2", "data.max_length": "64", "train.max_steps": "3", "train.report": False}
    with TestClient(create_app(settings)) as c:
        upload(c, "hello.json", alpaca_bytes)
        job = c.post("/api/jobs", json={"name": "tuned", "values": values}).json()
        assert _finished(c, job["id"])["status"] == "completed"
        summary = json.loads((settings.runs / "tuned" / "summary.json").read_text())

        # 1) the run's own validation split: the tuned loss is the loss training reported on it
        r = c.post("/api/runs/tuned/eval", json={"dataset": None, "max_new_tokens": 4})
        assert r.status_code == 200, r.text
        ev = r.json()
        assert ev["kind"] == "eval" and ev["status"] == "queued"
        assert ev["cli"].endswith(f"tunelab eval runs/tuned --data jobs/{ev['id']}/tuned.validation.jsonl "
                                  "--compare base --metrics exact_match,contains --max-new-tokens 4")
        done = _finished(c, ev["id"])
        assert done["status"] == "completed", done["log"]
        assert done["message"].startswith("done: eval/tuned.validation-vs-base_tiny-llama-")
        assert "base:tiny-llama" in done["log"]
        table = done["eval"]
        rows = {row["metric"]: row for row in table["rows"]}
        assert rows["loss"]["run"] == pytest.approx(summary["eval_loss"], rel=1e-5)
        assert table["n"] == summary["data"]["val_samples"]

        # 2) a library file: both numbers equal scoring the two models here, in this process
        r = c.post("/api/runs/tuned/eval", json={"dataset": "hello.json", "limit": 4, "max_new_tokens": 4})
        done = _finished(c, r.json()["id"])
        assert done["status"] == "completed", done["log"]
        run = Run(settings.runs / "tuned")
        tuned, tok, tpl = run.load_model(device="cpu")
        ours, _ = score_model(tuned, tok, tpl, str(settings.datasets / "hello.json"), max_new_tokens=4, limit=4,
                              max_length=run.config.data.max_length)
        base = load_model("tiny-llama", "auto", "cpu", False).eval()
        theirs, _ = score_model(base, tok, tpl, str(settings.datasets / "hello.json"), max_new_tokens=4, limit=4,
                                max_length=run.config.data.max_length)
        rows = {row["metric"]: row for row in done["eval"]["rows"]}
        assert rows["loss"]["run"] == pytest.approx(ours["loss"], rel=1e-5)
        assert rows["loss"]["other"] == pytest.approx(theirs["loss"], rel=1e-5)
        assert rows["loss"]["delta"] == pytest.approx(ours["loss"] - theirs["loss"], abs=1e-4)
        assert [e["dataset"] for e in c.get("/api/runs/tuned/evals").json()] == ["tuned.validation", "hello"]
        listed = [j for j in c.get("/api/jobs").json() if j["kind"] == "eval"]
        assert len(listed) == 2 and all(j["name"] == "eval tuned" for j in listed)


def test_a_restarted_studio_recognises_a_live_eval_worker(settings, alpaca_bytes):
    from tunelab.studio.jobs import JobRunner

    with TestClient(create_app(settings, start_worker=False)) as c:
        upload(c, "hello.json", alpaca_bytes)
        _fake_run(settings, "a", {})
        job = c.post("/api/runs/a/eval", json={"dataset": "hello.json"}).json()
    runner = JobRunner(settings, JobStore(settings.db))
    # stands in for an eval worker that outlived the studio: its command line names the run folder
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "eval", str(settings.runs / "a")])
    try:
        runner.store.update(job["id"], status="running", pid=proc.pid)
        runner.recover()
        assert runner.store.get(job["id"])["status"] == "running"
        proc.kill()
        proc.wait()
        runner.tick()
        got = runner.store.get(job["id"])
        assert got["status"] == "interrupted" and "queues the evaluation again" in got["message"]
        assert runner.resume(job["id"])["status"] == "queued"
    finally:
        proc.kill()
