"""Output drift: answers' length, refusal and format rates and embedding shift against validation outputs."""

from __future__ import annotations

import json
import logging
import math
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from tunelab.infer.drift import (
    DriftMonitor,
    OutputProfile,
    answer_format,
    answer_texts,
    build_output_profile,
    is_refusal,
    output_drift_report,
    psi,
)


@pytest.fixture(scope="module")
def answers(shared_data):
    return answer_texts(shared_data / "llamafactory_demo" / "alpaca_en_demo.json")


@pytest.fixture(scope="module")
def profile(answers, tiny_tokenizer, embeddings):
    return build_output_profile(answers[:400], tiny_tokenizer, embeddings)


REFUSALS = ["I'm sorry, but I can't help with that request.", "I cannot answer that.",
            "抱歉，我无法回答这个问题。", "As an AI language model, I do not have opinions."]


def test_refusal_and_format_detectors():
    assert all(is_refusal(t) for t in REFUSALS)
    assert not any(is_refusal(t) for t in ["Sure, here is a recipe.", "I can help: mix flour and eggs.",
                                           "可以，步骤如下。"])
    assert answer_format('{"label": "sports"}') == "json"
    assert answer_format("{not json") == "plain"
    assert answer_format("Use this:\n```python\nprint(1)\n```") == "code"
    assert answer_format("Steps:\n1. mix\n2. bake") == "list"
    assert answer_format("- a\n- b") == "list" and answer_format("  ") == "empty" and answer_format("ok") == "plain"


def test_answer_texts_reads_predictions_and_data(tmp_path):
    from tunelab.data.io import DataError

    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "q", "prediction": "a1", "compare_prediction": "b"}\n'
                 '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a2"}]}\n'
                 '{"instruction": "q", "output": "a3"}\n', encoding="utf-8")
    assert answer_texts(f) == ["a1", "a2", "a3"]
    f.write_text('{"prompt": "q"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"p.jsonl:1: no answer found"):
        answer_texts(f)


def test_profile_round_trips_and_is_not_an_input_profile(profile, tmp_path):
    from tunelab.infer.drift import DriftProfile

    path = profile.save(tmp_path / "out.json")
    assert OutputProfile.load(path) == profile
    assert sum(profile.format_share.values()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="missing"):  # the input loader refuses it too
        DriftProfile.load(path)
    (tmp_path / "in.json").write_text('{"n_texts": 3}')
    with pytest.raises(ValueError, match="in.json: not an output profile"):
        OutputProfile.load(tmp_path / "in.json")


def test_components_against_hand_computed_values(profile, answers, tiny_tokenizer, embeddings):
    live = REFUSALS * 5
    rep = output_drift_report(profile, live, tiny_tokenizer, embeddings)
    assert rep.stats["refusal_rate"] == 1.0
    assert rep.components["refusal"] == pytest.approx(1.0 - profile.refusal_rate)
    assert rep.components["format"] == pytest.approx(1.0 - profile.format_share["plain"])  # all plain now
    lengths = np.array([len(tiny_tokenizer(t, add_special_tokens=False)["input_ids"]) for t in live])
    counts = np.bincount(np.searchsorted(profile.length_edges, lengths, side="right"),
                         minlength=len(profile.length_probs))
    assert rep.components["length"] == pytest.approx(1 - math.exp(-psi(np.array(profile.length_probs),
                                                                       counts / len(live))))
    assert rep.stats["mean_tokens"] == pytest.approx(lengths.mean())
    assert rep.score == pytest.approx(sum(rep.components.values()) / 4)


def test_score_rises_when_answers_drift(profile, answers, tiny_tokenizer, embeddings, shared_data):
    same = output_drift_report(profile, answers[600:700], tiny_tokenizer, embeddings)
    chinese = answer_texts(shared_data / "llamafactory_demo" / "alpaca_zh_demo.json")[:100]
    shifted = output_drift_report(profile, chinese, tiny_tokenizer, embeddings)
    refusing = output_drift_report(profile, answers[600:650] + REFUSALS * 13, tiny_tokenizer, embeddings)
    assert not same.alert and shifted.alert
    assert same.score < refusing.score and same.score < shifted.score
    assert refusing.components["refusal"] > 0.45 and same.components["refusal"] < 0.05
    assert refusing.alert  # the refusal component alone raises it
    assert output_drift_report(profile, answers[600:700], tiny_tokenizer, embeddings, threshold=0.9).alert is False
    assert shifted.components["centroid"] > same.components["centroid"]


def test_monitor_warns_on_output_drift(profile, answers, tiny_tokenizer, embeddings, caplog):
    reports = []
    monitor = DriftMonitor("m", profile, tiny_tokenizer, embeddings, window=20, min_requests=20, every=20,
                           threshold=0.25, on_report=lambda model, r: reports.append(r))
    with caplog.at_level(logging.WARNING, logger="tunelab.serve.drift"):
        for text in answers[700:720]:
            monitor.observe(text)
        assert len(reports) == 1 and not reports[0].alert and not caplog.records
        for text in ['{"label": "x"}'] * 20:
            monitor.observe(text)
    assert reports[-1].alert and reports[-1].components["format"] > 0.9
    assert "output drift on model m" in caplog.records[-1].getMessage()


def test_server_exports_output_drift_of_its_own_answers(live, specs, tiny_tokenizer, answers):
    from openai import OpenAI

    from tunelab.infer.server import DriftSettings, create_app
    from tunelab.infer.stats import summarize_metrics

    from .helpers import ServerThread

    pool = live.app.state.tunelab.pool
    emb = pool.get("a").input_embeddings()
    prof = build_output_profile(answers[:200], tiny_tokenizer, emb)
    app = create_app(specs, pool=pool, output_profiles={"a": prof},
                     output_drift=DriftSettings(threshold=0.25, window=6, min_requests=6, every=6))
    monitor = app.state.tunelab.output_monitors["a"]
    got = []
    with ServerThread(app) as srv:
        import httpx

        client = OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)
        for i in range(3):
            r = client.chat.completions.create(model="a", messages=[{"role": "user", "content": f"hi {i}"}],
                                               max_tokens=6)
            got.append(r.choices[0].message.content)
        for i in range(3):  # streamed answers are watched too
            stream = client.chat.completions.create(model="a", messages=[{"role": "user", "content": f"yo {i}"}],
                                                    max_tokens=6, stream=True)
            got.append("".join(c.choices[0].delta.content or "" for c in stream if c.choices))
        client.chat.completions.create(model="b", messages=[{"role": "user", "content": "x"}], max_tokens=2)
        deadline = time.monotonic() + 60  # scored off the request path
        while monitor.last is None:
            assert time.monotonic() < deadline, "no output drift report"
            time.sleep(0.05)
        text = httpx.get(srv.url + "/metrics").text
    row = summarize_metrics(text)["a"]
    expected = output_drift_report(prof, got, tiny_tokenizer, emb)
    assert monitor.seen == 6 and row["output_drift"] == pytest.approx(expected.score)
    assert row["refusal_rate"] == pytest.approx(expected.stats["refusal_rate"])
    assert f'tunelab_output_stat{{model="a",stat="mean_tokens"}} {expected.stats["mean_tokens"]}' in text
    assert "output_drift" not in summarize_metrics(text).get("b", {})


def test_serve_output_profile_cli(tmp_path, tiny_tokenizer, embeddings):
    from tunelab.cli import app

    preds = tmp_path / "val.predictions.jsonl"
    rows = [{"prompt": f"q{i}", "prediction": t} for i, t in enumerate(["Paris.", "Sorry, I can't help.",
                                                                      '{"a": 1}', "- x\n- y"] * 3)]
    preds.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "outputs.json"
    res = CliRunner().invoke(app, ["serve-output-profile", str(preds), "--model", "tiny-llama", "--out", str(out)])
    assert res.exit_code == 0, res.output
    prof = OutputProfile.load(out)
    assert prof.n_texts == 12 and prof.refusal_rate == pytest.approx(0.25)
    assert prof.format_share == {"empty": 0.0, "json": 0.25, "code": 0.0, "list": 0.25, "plain": 0.5}
    direct = build_output_profile([r["prediction"] for r in rows], tiny_tokenizer, embeddings)
    assert prof.centroid == pytest.approx(direct.centroid) and prof.length_probs == direct.length_probs
    res = CliRunner().invoke(app, ["serve-output-profile", str(preds), "--out", str(out)])
    assert res.exit_code == 2 and "pass --model" in res.output
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("model: {name: tiny-llama}\n", encoding="utf-8")
    res = CliRunner().invoke(app, ["serve-output-profile", str(tmp_path / "run"), "--out", str(out)])
    assert res.exit_code == 2 and "run `tunelab eval" in res.output
