"""Prometheus metrics: counters, exact window quantiles, tokens/s; checked with prometheus_client's parser."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tunelab.infer.stats import LoadTestResult, ServeStats, summarize_metrics


def test_window_quantiles_and_tokens_per_second_match_numpy():
    stats = ServeStats(window=50)
    rng = np.random.default_rng(0)
    lat, toks = rng.uniform(0.05, 2.0, 80), rng.integers(1, 20, 80)
    for latency, n in zip(lat, toks):
        stats.observe("m", "/v1/chat/completions", 200, float(latency), 10, int(n))
    stats.observe("m", "/v1/chat/completions", 400, 0.001)
    families = {f.name: f for f in text_string_to_metric_families(stats.render().decode())}
    window = {s.labels["quantile"]: s.value for s in families["tunelab_request_latency_window_seconds"].samples}
    for q in ("0.5", "0.95", "0.99"):
        assert window[q] == pytest.approx(np.quantile(lat[-50:], float(q)))
    tps = families["tunelab_tokens_per_second"].samples[0].value
    assert tps == pytest.approx(toks[-50:].sum() / lat[-50:].sum())
    requests = {s.labels["status"]: s.value for s in families["tunelab_requests"].samples
                if s.name == "tunelab_requests_total"}
    assert requests == {"200": 80.0, "400": 1.0}
    completion = [s.value for s in families["tunelab_completion_tokens"].samples
                  if s.name == "tunelab_completion_tokens_total"]
    assert completion == [float(toks.sum())]
    count = [s.value for s in families["tunelab_request_latency_seconds"].samples
             if s.name == "tunelab_request_latency_seconds_count"]
    assert count == [80.0]  # the failed request is counted, but not timed


def test_summarize_metrics_reads_back_what_was_rendered():
    stats = ServeStats()
    for latency in (0.1, 0.2, 0.3):
        stats.observe("a", "/v1/completions", 200, latency, 5, 4)
    stats.observe("a", "/v1/completions", 404, 0.0)
    stats.drift.labels("a", "score").set(0.4)
    row = summarize_metrics(stats.render().decode())["a"]
    assert row["ok"] == 3 and row["errors"] == 1 and row["drift"] == 0.4
    assert row["p50"] == pytest.approx(0.2) and row["tokens_per_s"] == pytest.approx(12 / 0.6)


def test_two_servers_keep_separate_numbers():
    one, two = ServeStats(), ServeStats()
    one.observe("a", "/v1/completions", 200, 0.1, 1, 1)
    assert "a" in summarize_metrics(one.render().decode())
    assert summarize_metrics(two.render().decode()) == {}


def test_load_test_result_percentiles():
    res = LoadTestResult(requests=5, errors=1, elapsed_s=2.0, latencies_s=[0.1, 0.2, 0.3, 0.4],
                         completion_tokens=40, error_samples=[])
    assert res.throughput_rps == 2.5 and res.tokens_per_s == 20.0
    assert res.percentile(50) == pytest.approx(np.percentile([0.1, 0.2, 0.3, 0.4], 50))
