"""Serving statistics in Prometheus text format (`GET /metrics`).

Counters and histograms (requests, tokens, latency) come from `prometheus_client` on a
registry owned by one server, so two apps in one process never share numbers. Prometheus
histograms give percentiles only after a query (`histogram_quantile`), so the server also
exports exact P50/P95/P99 and tokens/s over a sliding window of recent requests, ready to
read with `curl` or `tunelab serve-stats`.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

QUANTILES = (0.5, 0.95, 0.99)
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class _WindowCollector:
    """Exports latency quantiles and tokens/s per model over the last `window` requests."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.samples: dict[str, deque[tuple[float, int]]] = {}
        self.lock = threading.Lock()

    def add(self, model: str, latency_s: float, completion_tokens: int) -> None:
        with self.lock:
            self.samples.setdefault(model, deque(maxlen=self.window)).append((latency_s, completion_tokens))

    def snapshot(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        with self.lock:
            return {m: (np.array([s[0] for s in d]), np.array([s[1] for s in d])) for m, d in self.samples.items()}

    def collect(self) -> Iterator[GaugeMetricFamily]:
        lat_family = GaugeMetricFamily("tunelab_request_latency_window_seconds",
                                       "Request latency quantiles over the recent window", labels=["model", "quantile"])
        tps_family = GaugeMetricFamily("tunelab_tokens_per_second",
                                       "Completion tokens per second of request time over the recent window",
                                       labels=["model"])
        for model, (lat, toks) in sorted(self.snapshot().items()):
            for q in QUANTILES:
                lat_family.add_metric([model, str(q)], float(np.quantile(lat, q)))
            busy = float(lat.sum())
            tps_family.add_metric([model], float(toks.sum()) / busy if busy > 0 else 0.0)
        yield lat_family
        yield tps_family


class ServeStats:
    """Request, token, latency and drift metrics of one server."""

    def __init__(self, window: int = 1000) -> None:
        """`window`: how many recent requests per model the exact quantiles cover."""
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("tunelab_requests", "Requests answered", ["model", "endpoint", "status"], registry=r)
        self.latency = Histogram("tunelab_request_latency_seconds", "End-to-end request latency", ["model"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("tunelab_time_to_first_token_seconds", "Time to the first streamed token", ["model"],
                              buckets=LATENCY_BUCKETS, registry=r)
        self.prompt_tokens = Counter("tunelab_prompt_tokens", "Prompt tokens processed", ["model"], registry=r)
        self.completion_tokens = Counter("tunelab_completion_tokens", "Completion tokens generated", ["model"],
                                         registry=r)
        self.in_flight = Gauge("tunelab_requests_in_flight", "Requests being processed or queued", registry=r)
        self.drift = Gauge("tunelab_drift_score", "Drift of live prompts from the training profile (see docs)",
                           ["model", "component"], registry=r)
        self.output_drift = Gauge("tunelab_output_drift_score",
                                  "Drift of live answers from the run's validation outputs (see docs)",
                                  ["model", "component"], registry=r)
        self.output_stats = Gauge("tunelab_output_stat", "Live answers: refusal_rate, mean_tokens, format_<name> "
                                  "shares over the monitor's window", ["model", "stat"], registry=r)
        self.window = _WindowCollector(window)
        r.register(self.window)

    def observe(self, model: str, endpoint: str, status: int, latency_s: float, prompt_tokens: int = 0,
                completion_tokens: int = 0) -> None:
        """Record one finished request."""
        self.requests.labels(model, endpoint, str(status)).inc()
        if status < 400:
            self.latency.labels(model).observe(latency_s)
            self.prompt_tokens.labels(model).inc(prompt_tokens)
            self.completion_tokens.labels(model).inc(completion_tokens)
            self.window.add(model, latency_s, completion_tokens)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


# ----------------------------------------------------------------------------- load test (client side)


@dataclass
class LoadTestResult:
    """What a bounded load test measured."""

    requests: int
    errors: int
    elapsed_s: float
    latencies_s: list[float]
    completion_tokens: int
    error_samples: list[str]

    @property
    def throughput_rps(self) -> float:
        return self.requests / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def percentile(self, q: float) -> float:
        """Latency percentile (q in 0..100) of the successful requests, in seconds (nan if none)."""
        return float(np.percentile(self.latencies_s, q)) if self.latencies_s else float("nan")


async def load_test(url: str, *, model: str, concurrency: int = 4, duration_s: float = 30.0, max_requests: int = 100,
                    max_tokens: int = 16, prompt: str = "Say hello.", api_key: str | None = None,
                    timeout_s: float = 120.0) -> LoadTestResult:
    """Send chat completions from `concurrency` workers until `max_requests` were sent or `duration_s` passed.

    Bounded both ways so it always stops by itself; requests already sent when time runs out
    are awaited (each within `timeout_s`).
    """
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens}
    endpoint = url.rstrip("/") + "/v1/chat/completions"
    result = LoadTestResult(0, 0, 0.0, [], 0, [])
    sent = 0
    t0 = time.perf_counter()
    deadline = t0 + duration_s

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal sent
        while sent < max_requests and time.perf_counter() < deadline:
            sent += 1
            start = time.perf_counter()
            try:
                resp = await client.post(endpoint, json=body, headers=headers)
                ok = resp.status_code == 200
                detail = f"HTTP {resp.status_code}: {resp.text[:200]}"
            except httpx.HTTPError as exc:
                ok, detail = False, f"{type(exc).__name__}: {exc}"
            result.requests += 1
            if ok:
                result.latencies_s.append(time.perf_counter() - start)
                result.completion_tokens += int(resp.json().get("usage", {}).get("completion_tokens", 0))
            else:
                result.errors += 1
                if len(result.error_samples) < 3:
                    result.error_samples.append(detail)

    async with httpx.AsyncClient(timeout=timeout_s) as client:
        await asyncio.gather(*(worker(client) for _ in range(max(concurrency, 1))))
    result.elapsed_s = time.perf_counter() - t0
    return result


def summarize_metrics(text: str) -> dict[str, dict[str, float]]:
    """Per model: requests (by status class), latency p50/p95/p99, tokens/s and drift score, from /metrics text."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            model = s.labels.get("model")
            if model is None:
                continue
            row = out.setdefault(model, {})
            if s.name == "tunelab_requests_total":
                key = "ok" if s.labels["status"].startswith("2") else "errors"
                row[key] = row.get(key, 0.0) + s.value
            elif s.name == "tunelab_request_latency_window_seconds":
                row["p" + str(round(float(s.labels["quantile"]) * 100))] = s.value
            elif s.name == "tunelab_tokens_per_second":
                row["tokens_per_s"] = s.value
            elif s.name == "tunelab_drift_score" and s.labels.get("component") == "score":
                row["drift"] = s.value
            elif s.name == "tunelab_output_drift_score" and s.labels.get("component") == "score":
                row["output_drift"] = s.value
            elif s.name == "tunelab_output_stat" and s.labels.get("stat") == "refusal_rate":
                row["refusal_rate"] = s.value
    return out
