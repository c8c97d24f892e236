"""Served traffic: request log, POST /v1/feedback, PII scrubbing, A/B significance, `tunelab retrain`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunelab.infer.traffic import (
    TrafficLogError,
    ab_significance,
    parse_outcome,
    read_log,
    retrain_records,
    scrub_pii,
    two_proportion_test,
)

from .helpers import API_KEY


def test_scrub_pii_replaces_identifiers_and_keeps_ordinary_numbers():
    text = ("Mail bob.smith+x@example.co.uk or call +1 415-555-0100 / 13812345678. ID 110105199003071234, "
            "card 4111 1111 1111 1111, server 192.168.1.20. In 2024 we sold 1234567890123 units at 3.5%.")
    out, counts = scrub_pii(text)
    assert out == ("Mail [EMAIL] or call [PHONE] / [PHONE]. ID [ID], card [CARD], server [IP]. "
                   "In 2024 we sold 1234567890123 units at 3.5%.")  # 13 digits failing Luhn is not a card
    assert counts == {"EMAIL": 1, "PHONE": 2, "ID": 1, "CARD": 1, "IP": 1}
    assert scrub_pii("我的手机是13912345678，邮箱 li@qq.com")[0] == "我的手机是[PHONE]，邮箱 [EMAIL]"


def test_parse_outcome():
    assert parse_outcome("success") is True and parse_outcome("BAD") is False and parse_outcome(0) is False
    assert parse_outcome(True) is True and parse_outcome(None) is None
    with pytest.raises(ValueError, match="'maybe' is not one of"):
        parse_outcome("maybe")


def _req(i, prompt, answer, model="a", finish="stop", route=None):
    return {"type": "request", "id": f"c{i}", "time": i, "model": model, "route": route, "user": None,
            "messages": [{"role": "user", "content": prompt}], "answer": answer, "finish_reason": finish,
            "completion_tokens": 3}


def _fb(i, rating=None, outcome=None):
    return {"type": "feedback", "id": f"c{i}", "time": 100 + i, "rating": rating, "outcome": outcome}


def _write(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


LOG = [
    _req(1, "What is 2+2?", "4"), _fb(1, rating=5),
    _req(2, "what is  2+2?", "Four."), _fb(2, rating=4),  # same prompt (normalized), lower rating: dropped
    _req(3, "Email me at a@b.com", "Sure, I wrote to a@b.com."), _fb(3, outcome=True),
    _req(4, "Tell a joke", "no"), _fb(4, rating=2),  # negative
    _req(5, "Unrated", "answer"),  # unrated
    _req(6, "Cut", "half an ans", finish="length"), _fb(6, rating=5),  # truncated
    _req(7, "Good but failed", "x"), _fb(7, rating=5, outcome=False),  # outcome failure wins
    _req(8, "Other model", "y", model="b"), _fb(8, rating=5),
    _req(9, "Rated twice", "z"), _fb(9, rating=1), _fb(9, rating=5),  # the last feedback counts
]


def test_retrain_records_filters_dedups_and_scrubs(tmp_path):
    log = _write(tmp_path / "log.jsonl", LOG)
    data = retrain_records(log, model="a")
    assert [r["messages"] for r in data.records] == [
        [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}],
        [{"role": "user", "content": "Email me at [EMAIL]"},
         {"role": "assistant", "content": "Sure, I wrote to [EMAIL]."}],
        [{"role": "user", "content": "Rated twice"}, {"role": "assistant", "content": "z"}],
    ]
    s = data.summary()
    assert (s["requests"], s["kept"], s["negative"], s["unrated"], s["truncated"], s["duplicates"],
            s["other_model"]) == (9, 3, 2, 1, 1, 1, 1)
    assert s["pii"] == {"EMAIL": 2}
    everything = retrain_records(log, include_unrated=True, min_rating=1)
    # + tell-a-joke, the unrated one and the other model's; the failed outcome still goes
    assert everything.kept == 6 and everything.unrated == 0 and everything.negative == 1


def test_read_log_errors_name_the_line(tmp_path):
    with pytest.raises(TrafficLogError, match="no such request log; start the server with --request-log"):
        read_log(tmp_path / "none.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(_req(1, "q", "a")) + "\n{oops\n", encoding="utf-8")
    with pytest.raises(TrafficLogError, match=r"bad.jsonl:2: not JSON"):
        read_log(bad)
    bad.write_text('{"route": "ab", "variant": "a", "latency_s": 0.1}\n', encoding="utf-8")
    with pytest.raises(TrafficLogError, match=r"bad.jsonl:1: type is None.*A/B log"):
        read_log(bad)


def test_two_proportion_test_matches_chi_square():
    from scipy.stats import chi2_contingency

    t = two_proportion_test("b", 45, 100, "a", 30, 100)
    chi2, p, _, _ = chi2_contingency([[45, 55], [30, 70]], correction=False)
    assert t.z ** 2 == pytest.approx(chi2) and t.p_value == pytest.approx(p) and t.z > 0
    assert t.diff == pytest.approx(0.15) and t.ci95[0] < 0.15 < t.ci95[1]
    with pytest.raises(ValueError, match="needs outcomes on both variants"):
        two_proportion_test("a", 0, 0, "b", 1, 2)


def test_server_logs_requests_and_feedback_and_serve_stats_tests_the_split(live, specs, tmp_path):
    from fastapi.testclient import TestClient

    from tunelab.cli import app as cli
    from tunelab.infer.ab import read_ab_log
    from tunelab.infer.server import create_app

    req_log, ab_log = tmp_path / "requests.jsonl", tmp_path / "ab.jsonl"
    app = create_app(specs, pool=live.app.state.tunelab.pool, api_key=API_KEY, routes={"chat": "a=50,b=50"},
                     ab_log=ab_log, request_log=req_log)
    auth = {"Authorization": f"Bearer {API_KEY}"}
    ids = {}
    with TestClient(app) as client:
        for i in range(12):
            r = client.post("/v1/chat/completions", headers=auth, json={
                "model": "chat", "user": f"u{i}", "max_tokens": 3,
                "messages": [{"role": "user", "content": f"mail me at u{i}@x.org"}]})
            assert r.status_code == 200
            ids[r.json()["id"]] = r.json()["model"]
        r = client.post("/v1/completions", headers=auth, json={"model": "base", "prompt": "Once", "max_tokens": 2})
        plain_id = r.json()["id"]
        # variant a succeeds every time, b never: the feedback makes the split significant
        for cid, variant in ids.items():
            r = client.post("/v1/feedback", headers=auth, json={"id": cid, "outcome": variant == "a", "rating": 5})
            assert r.status_code == 200 and r.json()["route"] == "chat"
        assert client.post("/v1/feedback", headers=auth, json={"id": plain_id, "rating": 2}).status_code == 200
        assert client.post("/v1/feedback", json={"id": plain_id, "rating": 2}).status_code == 401
        r = client.post("/v1/feedback", headers=auth, json={"id": "chatcmpl-nope", "rating": 2})
        assert r.status_code == 404 and "no answer with id" in r.json()["error"]["message"]
        r = client.post("/v1/feedback", headers=auth, json={"id": plain_id, "outcome": "maybe"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "outcome"
        r = client.post("/v1/feedback", headers=auth, json={"id": plain_id})
        assert r.status_code == 400
    requests, feedback = read_log(req_log)
    assert len(requests) == 13 and set(requests[0]) >= {"id", "model", "route", "messages", "answer", "finish_reason"}
    assert requests[0]["messages"] == [{"role": "user", "content": "mail me at u0@x.org"}]
    assert requests[-1]["messages"] == "Once" and requests[-1]["route"] is None
    assert feedback[plain_id]["rating"] == 2 and feedback[plain_id]["outcome"] is None
    # the log feeds retrain; the random model's answers all stopped at max_tokens, so none is kept ...
    assert retrain_records(req_log).truncated == 13
    # ... and had they ended on their own, variant a's rated answers would be, PII scrubbed
    ended = _write(tmp_path / "ended.jsonl", [{**json.loads(x), "finish_reason": "stop"} if '"request"' in x
                                              else json.loads(x) for x in req_log.read_text().splitlines()])
    data = retrain_records(ended)
    n_a = sum(v == "a" for v in ids.values())
    assert data.negative == len(ids) - n_a + 1 and data.kept == n_a and data.pii == {"EMAIL": n_a}
    assert all("[EMAIL]" in r["messages"][0]["content"] for r in data.records)
    tests = ab_significance(read_ab_log(ab_log))["chat"]
    assert len(tests) == 1
    t = tests[0]
    assert {t.a, t.b} == {"a", "b"} and t.n_a + t.n_b == 12
    res = CliRunner().invoke(cli, ["serve-stats", "--ab-log", str(ab_log)])
    assert res.exit_code == 0, res.output
    assert "two-proportion z-test" in res.output and f"p {t.p_value:.4f}" in res.output


def test_feedback_needs_a_log(live, specs):
    from fastapi.testclient import TestClient

    from tunelab.infer.server import create_app

    app = create_app(specs, pool=live.app.state.tunelab.pool)
    with TestClient(app) as client:
        cid = client.post("/v1/chat/completions", json={"model": "a", "max_tokens": 2,
                                                         "messages": [{"role": "user", "content": "hi"}]}).json()["id"]
        r = client.post("/v1/feedback", json={"id": cid, "rating": 4})
    assert r.status_code == 409 and "--request-log" in r.json()["error"]["message"]


@pytest.fixture(scope="module")
def old_run(tmp_path_factory, shared_data):
    import tunelab

    root = tmp_path_factory.mktemp("retrain")
    cfg = {"model": {"name": "tiny-llama"},
           "data": {"train": str(shared_data / "llamafactory_demo" / "alpaca_en_demo.json"), "max_samples": 24,
                    "max_length": 96, "val_size": 0.25},
           "method": {"name": "lora", "r": 4, "alpha": 8},
           "train": {"max_steps": 2, "batch_size": 4, "lr": 1e-3, "seed": 3, "report": False, "eval_every": 2},
           "output_dir": str(root / "old")}
    return tunelab.train(cfg, progress=False)


def test_retrain_cli_trains_from_the_old_run_and_compares_on_its_validation_set(old_run, tmp_path):
    from tunelab.cli import app as cli
    from tunelab.run import Run

    log = _write(tmp_path / "log.jsonl", LOG)
    out = tmp_path / "new"
    res = CliRunner().invoke(cli, ["retrain", str(old_run.path), "--log", str(log), "--out", str(out),
                                   "--max-new-tokens", "2", "-q", "train.max_steps=2"])
    assert res.exit_code == 0, res.output
    assert "9 requests -> 4 kept" in res.output and "EMAIL 2" in res.output
    new = Run(out)
    assert new.config.model.name == str(old_run.path.resolve())
    traffic = [json.loads(x) for x in (tmp_path / "new.traffic.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(traffic) == 4 and not any("a@b.com" in json.dumps(r) for r in traffic)
    val = [json.loads(x) for x in (tmp_path / "new.val.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(val) == 6  # 25% of the old run's 24 records
    report = json.loads((tmp_path / "new.retrain.json").read_text(encoding="utf-8"))
    ev = report["eval"]
    assert ev["compare"]["name"] == "old"
    # the old run's loss on the written validation set is the loss its own training measured at the end
    assert ev["compare"]["metrics"]["loss"] == pytest.approx(old_run.summary["eval_loss"], rel=1e-4)
    assert ev["compare"]["deltas"]["loss"] == pytest.approx(ev["loss"] - ev["compare"]["metrics"]["loss"])


def test_retrain_refuses_without_usable_traffic(old_run, tmp_path):
    from tunelab.cli import app as cli

    log = _write(tmp_path / "log.jsonl", [_req(1, "q", "a")])
    res = CliRunner().invoke(cli, ["retrain", str(old_run.path), "--log", str(log), "--out", str(tmp_path / "n")])
    assert res.exit_code != 0 and "0 usable answers" in res.output and "--include-unrated" in res.output
    assert not (tmp_path / "n").exists()
