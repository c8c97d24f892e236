"""Drift: the measures against scipy / hand-computed numbers, and the score on real English vs Chinese prompts."""

from __future__ import annotations

import logging
import math
import time

import httpx
import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon

from tunelab.infer.drift import (
    DriftMonitor,
    DriftProfile,
    build_profile,
    drift_report,
    js_divergence,
    prompt_text,
    prompt_texts,
    psi,
    text_script,
)


@pytest.fixture(scope="module")
def english(shared_data):
    return prompt_texts(shared_data / "llamafactory_demo" / "alpaca_en_demo.json")


@pytest.fixture(scope="module")
def chinese(shared_data):
    return prompt_texts(shared_data / "llamafactory_demo" / "alpaca_zh_demo.json")


@pytest.fixture(scope="module")
def profile(english, tiny_tokenizer, embeddings):
    return build_profile(english[:600], tiny_tokenizer, embeddings)


def test_js_divergence_matches_scipy():
    rng = np.random.default_rng(0)
    p, q = rng.random(30), rng.random(30)
    q[:5] = 0
    assert js_divergence(p, q) == pytest.approx(jensenshannon(p, q, base=2) ** 2)
    assert js_divergence(np.array([1.0, 0]), np.array([0, 1.0])) == pytest.approx(1.0)


def test_psi_hand_computed():
    e, a = np.array([0.5, 0.5]), np.array([0.25, 0.75])
    assert psi(e, a) == pytest.approx(-0.25 * math.log(0.5) + 0.25 * math.log(1.5))
    assert psi(e, e) == 0.0


def test_script_and_prompt_extraction():
    assert text_script("Describe a process of making crepes.") == "latin"
    assert text_script("保持健康的三个提示。") == "cjk"
    assert text_script("12345 !!") == "other"
    assert prompt_text({"instruction": "Sum", "input": "1 2"}) == "Sum\n1 2"
    assert prompt_text({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
                                     {"role": "assistant", "content": "a"}]}) == "q"
    assert prompt_text({"conversations": [{"from": "human", "value": "hey"}]}) == "hey"


def test_prompt_texts_names_the_bad_record(tmp_path):
    from tunelab.data.io import DataError

    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "ok"}\n{"label": 1}\n')
    with pytest.raises(DataError, match=r"d.jsonl:2: no prompt found"):
        prompt_texts(data)


def test_profile_describes_the_training_prompts(profile, english):
    assert profile.n_texts == 600
    assert profile.script_share["latin"] > 0.95
    assert sum(profile.length_probs) == pytest.approx(1.0) and sum(profile.token_probs) == pytest.approx(1.0)
    assert len(profile.length_probs) == len(profile.length_edges) + 1
    assert len(profile.centroid) == 64


def test_profile_round_trips_through_json(profile, tmp_path):
    path = profile.save(tmp_path / "profile.json")
    assert DriftProfile.load(path) == profile
    (tmp_path / "bad.json").write_text('{"n_texts": 3}')
    with pytest.raises(ValueError, match="bad.json: not a drift profile .missing length_edges"):
        DriftProfile.load(tmp_path / "bad.json")


def test_score_rises_on_chinese_prompts_against_an_english_profile(profile, english, chinese, tiny_tokenizer,
                                                                   embeddings):
    same = drift_report(profile, english[800:900], tiny_tokenizer, embeddings, threshold=0.25)
    shifted = drift_report(profile, chinese[:100], tiny_tokenizer, embeddings, threshold=0.25)
    half = drift_report(profile, english[900:950] + chinese[100:150], tiny_tokenizer, embeddings, threshold=0.25)
    assert not same.alert and shifted.alert
    assert same.score < half.score < shifted.score
    assert shifted.components["script"] > 0.9  # nearly every prompt moved from Latin to CJK
    for name in ("length", "script", "tokens", "centroid"):
        assert shifted.components[name] > same.components[name], name


def test_monitor_warns_only_after_the_window_drifts(profile, english, chinese, tiny_tokenizer, embeddings, caplog):
    reports = []
    monitor = DriftMonitor("m", profile, tiny_tokenizer, embeddings, window=40, min_requests=40, every=20,
                           threshold=0.25, on_report=lambda model, r: reports.append(r))
    with caplog.at_level(logging.WARNING, logger="tunelab.serve.drift"):
        for text in english[700:740]:
            monitor.observe(text)
        assert len(reports) == 1 and not reports[0].alert and not caplog.records
        for text in chinese[:40]:
            monitor.observe(text)
    assert reports[-1].alert and reports[-1].score > reports[0].score
    assert "input drift on model m" in caplog.records[-1].getMessage()


def test_server_exports_the_drift_score(live, specs, chinese, tiny_tokenizer, english):
    from openai import OpenAI

    from tunelab.infer.server import DriftSettings, create_app
    from tunelab.infer.stats import summarize_metrics

    from .helpers import ServerThread

    pool = live.app.state.tunelab.pool
    prof = build_profile(english[:300], tiny_tokenizer, pool.get("base").input_embeddings())
    app = create_app(specs, pool=pool, drift_profiles={"base": prof},
                     drift=DriftSettings(threshold=0.25, window=8, min_requests=8, every=8))
    with ServerThread(app) as srv:
        client = OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)
        for text in chinese[:8]:
            client.chat.completions.create(model="base", messages=[{"role": "user", "content": text}], max_tokens=1)
        deadline = time.monotonic() + 60  # the score is computed off the request path
        while "drift" not in (row := summarize_metrics(httpx.get(srv.url + "/metrics").text).get("base", {})):
            assert time.monotonic() < deadline, "no drift score exported"
            time.sleep(0.1)
    assert row["drift"] > 0.25


def test_profile_of_another_vocabulary_is_refused(live, specs, profile):
    from tunelab.infer.model_pool import SpecError
    from tunelab.infer.server import create_app

    other = DriftProfile(**{**profile.__dict__, "meta": {**profile.meta, "vocab_size": 32000}})
    with pytest.raises(SpecError, match="vocabulary of 32000 tokens, but the model has 49152"):
        create_app(specs, pool=live.app.state.tunelab.pool, drift_profiles={"a": other})
    with pytest.raises(SpecError, match="drift profile for 'nope', which is not served"):
        create_app(specs, pool=live.app.state.tunelab.pool, drift_profiles={"nope": profile})
