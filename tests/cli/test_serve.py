"""The serve CLI: the real `serve` process, bench-serve, serve-stats, serve-profile and --model parsing."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import httpx
import pytest
import typer
from typer.testing import CliRunner

from tunelab.cli.serve import app, parse_model_arg

from tests.infer.helpers import API_KEY

runner = CliRunner()


def _ok_requests(url: str, model: str) -> float:
    from tunelab.infer.stats import summarize_metrics

    text = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {API_KEY}"}).text
    return summarize_metrics(text).get(model, {}).get("ok", 0.0)


def test_bench_serve_is_bounded_by_count_and_reports_latency(live):
    before = _ok_requests(live.url, "b")
    result = runner.invoke(app, ["bench-serve", live.url, "--concurrency", "2", "--duration", "120",
                                 "--max-requests", "5", "--model", "b", "--max-tokens", "2", "--api-key", API_KEY])
    assert result.exit_code == 0, result.output
    assert "model b: 5 requests (0 errors)" in result.output
    assert "throughput:" in result.output and "p50" in result.output and "p99" in result.output
    assert _ok_requests(live.url, "b") == before + 5


def test_bench_serve_reports_errors_and_fails_when_all_fail(live):
    result = runner.invoke(app, ["bench-serve", live.url, "-n", "2", "--model", "a", "--api-key", "wrong"])
    assert result.exit_code == 1
    assert "2 requests (2 errors)" in result.output


def test_serve_stats_prints_each_model_and_the_ab_log(client, live):
    client.chat.completions.create(model="ab", messages=[{"role": "user", "content": "x"}], max_tokens=1, user="z")
    result = runner.invoke(app, ["serve-stats", live.url, "--api-key", API_KEY, "--ab-log", str(live.ab_log)])
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line.split() for line in result.output.splitlines() if line.strip()}
    assert float(lines["a"][1]) >= 1  # ok requests of model a
    assert "ab -> a:" in result.output or "ab -> b:" in result.output
    denied = runner.invoke(app, ["serve-stats", live.url])
    assert denied.exit_code == 1 and "HTTP 401" in denied.output


def test_serve_profile_writes_a_loadable_profile(tmp_path):
    from tunelab.infer.drift import DriftProfile

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"question {i} about cats"},
                                                     {"role": "assistant", "content": "ok"}]}) + "\n"
                            for i in range(30)))
    out = tmp_path / "profile.json"
    result = runner.invoke(app, ["serve-profile", str(data), "--model", "tiny-llama", "--out", str(out)])
    assert result.exit_code == 0, result.output
    profile = DriftProfile.load(out)
    assert profile.n_texts == 30 and profile.script_share["latin"] == 1.0
    assert profile.meta["base_model"] == "tiny-llama"


def test_model_arg_parsing(tmp_path, adapters):
    tpl = tmp_path / "chat_template.jinja"
    tpl.write_text("{{ messages[0]['content'] }}")
    spec = parse_model_arg(f"a=tiny-llama,adapter={adapters['a']},template={tpl}")
    assert (spec.name, spec.base_model, spec.adapter_dir, spec.chat_template) == \
        ("a", "tiny-llama", str(adapters["a"]), "{{ messages[0]['content'] }}")
    assert parse_model_arg("plain=tiny-llama").chat_template is None
    from tunelab.data.templates import NAMED_TEMPLATES

    assert parse_model_arg("c=tiny-llama,template=chatml").chat_template == NAMED_TEMPLATES["chatml"]
    for bad, message in [("tiny-llama", "expected NAME=BASE"), ("a=tiny-llama,lora=x", "unknown option 'lora=x'"),
                         (f"a=tiny-llama,template={tmp_path / 'none.jinja'}", "template file .* not found")]:
        with pytest.raises(typer.BadParameter, match=message):
            parse_model_arg(bad)


def test_serve_command_runs_a_real_server(adapters, tmp_path, tiny_tokenizer):
    (tmp_path / "chat_template.jinja").write_text(tiny_tokenizer.chat_template)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-c", "from tunelab.cli.serve import app; app()", "serve", "--port", str(port),
           "--model", f"a=tiny-llama,adapter={adapters['a']},template={tmp_path / 'chat_template.jinja'}",
           "--model", "plain=tiny-llama", "--route", "exp=a=1,plain=1", "--max-tokens", "4"]
    proc = subprocess.Popen(cmd, env={**os.environ, "TUNELAB_API_KEY": "env-key"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.2)
        headers = {"Authorization": "Bearer env-key"}
        models = httpx.get(url + "/v1/models", headers=headers).json()
        assert [m["id"] for m in models["data"]] == ["a", "plain", "exp"]
        body = {"model": "a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0}
        assert httpx.post(url + "/v1/chat/completions", json=body).status_code == 401
        resp = httpx.post(url + "/v1/chat/completions", json=body, headers=headers)
        assert resp.status_code == 200 and resp.json()["usage"]["completion_tokens"] <= 4
        too_many = httpx.post(url + "/v1/chat/completions", json={**body, "max_tokens": 5}, headers=headers)
        assert too_many.status_code == 400
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.parametrize("args, message", [
    (["--model", "a=tiny-llama", "--route", "chat=a=1,zzz=1"], "unknown variant(s) zzz; served models are a"),
    (["--model", "a=tiny-llama", "--route", "chat=a=x"], "weight 'x' of 'a' is not a number"),
    (["--model", "a=no-such-model"], "no-such-model: unknown model"),
    (["--model", "a=tiny-llama", "--drift-profile", "a=/nonexistent/profile.json"], "/nonexistent/profile.json"),
])
def test_serve_refuses_bad_arguments_with_a_message(args, message):
    result = runner.invoke(app, ["serve", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
