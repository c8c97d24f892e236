"""The OpenAI-compatible API, driven by the official `openai` client against a live server on 127.0.0.1."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from .helpers import API_KEY, chat_ids, direct_generate

PROMPT = "Name three colors."
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def ask(client, model: str, text: str = PROMPT, max_tokens: int = 6, **kw):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}],
                                          max_tokens=max_tokens, temperature=0, **kw)


def test_models_lists_served_models_and_routes(client):
    assert [m.id for m in client.models.list()] == ["base", "a", "b", "ab"]
    assert client.models.retrieve("ab").id == "ab"
    with pytest.raises(openai.NotFoundError, match="available models: base, a, b, ab"):
        client.models.retrieve("nope")


@pytest.mark.parametrize("name", ["base", "a", "b"])
def test_chat_matches_direct_generation_of_same_model_and_adapter(client, reference, tiny_tokenizer, chat_template,
                                                                   name):
    resp = ask(client, name)
    expected, n_tokens = direct_generate(reference(name), tiny_tokenizer,
                                         chat_ids(tiny_tokenizer, chat_template, PROMPT), 6)
    assert resp.model == name
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].message.content == expected
    assert resp.choices[0].finish_reason == ("length" if n_tokens == 6 else "stop")
    assert resp.usage.completion_tokens == n_tokens
    assert resp.usage.prompt_tokens == len(chat_ids(tiny_tokenizer, chat_template, PROMPT))


def test_adapters_answer_differently_from_each_other_and_the_base(client):
    answers = {name: ask(client, name, max_tokens=8).choices[0].message.content for name in ("base", "a", "b")}
    assert len(set(answers.values())) == 3, answers


def test_streaming_chat_joins_to_the_non_streamed_answer(client):
    whole = ask(client, "a", max_tokens=8)
    chunks = list(ask(client, "a", max_tokens=8, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_text_completion_streamed_and_not_matches_direct_generation(client, reference, tiny_tokenizer):
    prompt = "Once upon a time"
    expected, n_tokens = direct_generate(reference("b"), tiny_tokenizer, tiny_tokenizer(prompt)["input_ids"], 5)
    resp = client.completions.create(model="b", prompt=prompt, max_tokens=5, temperature=0)
    assert resp.object == "text_completion" and resp.choices[0].text == expected
    assert resp.usage.completion_tokens == n_tokens
    streamed = "".join(c.choices[0].text for c in
                       client.completions.create(model="b", prompt=prompt, max_tokens=5, temperature=0, stream=True))
    assert streamed == expected


def test_stop_string_cuts_the_answer(client):
    full = ask(client, "a", max_tokens=8).choices[0].message.content
    stop = full[3:6]
    resp = ask(client, "a", max_tokens=8, stop=[stop])
    assert resp.choices[0].message.content == full[:full.index(stop)]
    assert resp.choices[0].finish_reason == "stop"


def test_sampling_with_a_seed_repeats_and_differs_from_greedy(client):
    def sample(seed):
        return client.chat.completions.create(model="b", messages=[{"role": "user", "content": "hi"}], max_tokens=8,
                                              temperature=1.5, top_p=0.95, seed=seed).choices[0].message.content

    first, again, greedy = sample(7), sample(7), ask(client, "b", "hi", max_tokens=8).choices[0].message.content
    assert first == again
    assert len({first, sample(8), sample(9), greedy}) > 1


def test_missing_or_wrong_api_key_is_401(live):
    from openai import OpenAI

    bad = OpenAI(base_url=live.url + "/v1", api_key="wrong-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as err:
        bad.models.list()
    assert err.value.status_code == 401 and err.value.body["code"] == "invalid_api_key"
    assert "incorrect API key" in err.value.message
    resp = httpx.post(live.url + "/v1/chat/completions", json={"model": "a", "messages": []})
    assert resp.status_code == 401 and "missing API key" in resp.json()["error"]["message"]
    assert httpx.get(live.url + "/metrics").status_code == 401
    assert httpx.get(live.url + "/health").json()["status"] == "ok"  # health stays open for probes


def test_oversized_body_is_413_with_or_without_content_length(client, live):
    with pytest.raises(openai.APIStatusError) as err:
        ask(client, "a", text="x" * 30_000)
    assert err.value.status_code == 413 and "larger than 20000 bytes" in err.value.message

    def chunks():  # chunked transfer: no Content-Length header to check up front
        yield b'{"model": "a", "messages": [{"role": "user", "content": "'
        for _ in range(30):
            yield b"y" * 1000
        yield b'"}]}'

    resp = httpx.post(live.url + "/v1/chat/completions", content=chunks(), headers=AUTH)
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "request_too_large"


def test_too_many_max_tokens_is_400(client):
    with pytest.raises(openai.BadRequestError) as err:
        ask(client, "a", max_tokens=9)
    assert "max_tokens=9 is above this server's limit of 8" in err.value.message
    assert err.value.body["param"] == "max_tokens"


def test_omitted_max_tokens_defaults_within_the_limit(client, live):
    resp = client.chat.completions.create(model="a", messages=[{"role": "user", "content": "hi"}], temperature=0)
    assert resp.usage.completion_tokens <= 8  # default 256, capped by the server's max_tokens=8
    body = {"model": "a", "prompt": "hi", "temperature": 0}
    done = httpx.post(live.url + "/v1/completions", json=body, headers=AUTH).json()
    assert done["usage"]["completion_tokens"] <= 8 and done["choices"][0]["finish_reason"] in ("stop", "length")


@pytest.mark.parametrize("body, message", [
    (b"{not json", "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"),
    (b"[1, 2]", "must be a JSON object, got list"),
    (b'{"model": "a"}', "messages: Field required"),
    (b'{"model": "a", "messages": [{"role": "wizard", "content": "x"}]}', "messages.0.role"),
    (b'{"model": "a", "messages": [{"role": "user", "content": "x"}], "n": 2}', "n: Input should be less than"),
    (b'{"model": "a", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}', "temperature"),
])
def test_malformed_requests_are_400_in_openai_error_shape(live, body, message):
    resp = httpx.post(live.url + "/v1/chat/completions", content=body,
                      headers={**AUTH, "Content-Type": "application/json"})
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert message in error["message"]
    assert httpx.get(live.url + "/health").status_code == 200  # still serving


CHAT = {"model": "a", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}


@pytest.mark.parametrize("path, body, param, message", [
    ("chat/completions", {**CHAT, "seed": 2**63 + 1}, "seed", "less than or equal to 9223372036854775807"),
    ("chat/completions", {**CHAT, "seed": 2**64}, "seed", "less than or equal to"),
    ("chat/completions", {**CHAT, "seed": -(2**63) - 1}, "seed", "greater than or equal to"),
    ("completions", {"model": "a", "prompt": "", "max_tokens": 2}, "prompt", "must not be empty"),
    ("completions", {"model": "a", "prompt": [""], "max_tokens": 2}, "prompt", "must not be empty"),
    ("completions", {"model": "a", "prompt": [], "max_tokens": 2}, "prompt", "must not be empty"),
    ("completions", {"model": "a", "prompt": [1, 2], "max_tokens": 2}, "prompt.str", "valid string"),
    ("chat/completions", {**CHAT, "stream_options": "yes"}, "stream_options", "valid dictionary"),
    ("chat/completions", {**CHAT, "user": {"id": 1}}, "user", "valid string"),
    ("chat/completions", {**CHAT, "max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
    ("chat/completions", {**CHAT, "top_p": 0}, "top_p", "greater than 0"),
    ("chat/completions", {**CHAT, "messages": "hi"}, "messages", "valid list"),
    ("chat/completions", {**CHAT, "messages": []}, "messages", "at least 1 item"),
    ("chat/completions", {**CHAT, "stop": 3}, "stop.str", "valid string"),
])
def test_client_mistakes_in_any_field_are_400_not_500(live, path, body, param, message):
    resp = httpx.post(f"{live.url}/v1/{path}", json=body, headers=AUTH)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert error["param"] == param and message in error["message"]


@pytest.mark.parametrize("path, body, param, field", [
    ("completions", {"model": "a", "prompt": "2 + 2 = \ud800", "max_tokens": 2}, "prompt", "prompt"),
    ("completions", {"model": "a", "prompt": ["\udfff"], "max_tokens": 2}, "prompt", "prompt[0]"),
    ("chat/completions", {**CHAT, "messages": [{"role": "user", "content": "x\ud83d"}]}, "messages",
     "messages[0].content"),
    ("chat/completions", {**CHAT, "messages": [{"role": "user", "content": [{"type": "text", "text": "\ud800"}]}]},
     "messages", "messages[0].content[0].text"),
    ("chat/completions", {**CHAT, "stop": ["\ud800"]}, "stop", "stop[0]"),
    ("chat/completions", {**CHAT, "user": "\udc00"}, "user", "user"),
])
def test_a_lone_surrogate_in_a_request_string_is_400_naming_the_field(live, path, body, param, field):
    raw = json.dumps(body).encode()  # ensure_ascii: the surrogate travels as the JSON escape \\ud800
    resp = httpx.post(f"{live.url}/v1/{path}", content=raw, headers={**AUTH, "Content-Type": "application/json"})
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param, error
    assert error["message"].startswith(f"field '{field}' holds a lone UTF-16 surrogate"), error


def test_a_whole_emoji_written_as_a_surrogate_pair_is_accepted(live):
    raw = b'{"model": "a", "prompt": "smile \\ud83d\\ude00", "max_tokens": 2}'  # the escaped pair is one character
    resp = httpx.post(f"{live.url}/v1/completions", content=raw, headers={**AUTH, "Content-Type": "application/json"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["usage"]["completion_tokens"] >= 1


@pytest.mark.parametrize("raw", [b'{"model": "a", "messages": [{"role": "user", "content": "x"}], "temperature": NaN}',
                                 b"[" * 10_000 + b"]" * 10_000])
def test_non_finite_numbers_and_deep_nesting_are_400(live, raw):
    resp = httpx.post(live.url + "/v1/chat/completions", content=raw,
                      headers={**AUTH, "Content-Type": "application/json"})
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["type"] == "invalid_request_error"


def test_a_vanishing_temperature_samples_greedily_instead_of_failing(client):
    tiny = client.chat.completions.create(model="b", messages=[{"role": "user", "content": "hi"}], max_tokens=6,
                                          temperature=1e-300, seed=3).choices[0].message.content
    assert tiny == ask(client, "b", "hi").choices[0].message.content


def test_unknown_model_is_404_listing_available_models(client):
    with pytest.raises(openai.NotFoundError) as err:
        ask(client, "gpt-5")
    assert err.value.body["code"] == "model_not_found"
    assert "available models: base, a, b, ab" in err.value.message


def test_unknown_path_and_method_get_openai_error_json(live):
    resp = httpx.get(live.url + "/v1/nothing", headers=AUTH)
    assert resp.status_code == 404 and "error" in resp.json()
    resp = httpx.get(live.url + "/v1/chat/completions", headers=AUTH)
    assert resp.status_code == 405 and resp.json()["error"]["code"] == "method_not_allowed"


def test_concurrency_limit_is_429(live, specs):
    from openai import OpenAI

    from tunelab.infer.server import ServeLimits, create_app

    from .helpers import ServerThread

    app = create_app(specs, pool=live.app.state.tunelab.pool, limits=ServeLimits(max_concurrency=0))
    with ServerThread(app) as srv, pytest.raises(openai.RateLimitError) as err:
        ask(OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0), "a")
    assert err.value.body["code"] == "too_many_requests" and "limit 0" in err.value.message


def test_model_without_chat_template_serves_completions_only(tiny_tokenizer):
    from openai import OpenAI

    from tunelab.infer.model_pool import ModelPool, ModelSpec
    from tunelab.infer.server import create_app
    from tunelab.models import load_model

    from .helpers import ServerThread

    raw = ModelSpec("raw", "tiny-llama", None, None)
    pool = ModelPool([raw], load_model=load_model, load_tokenizer=lambda name: tiny_tokenizer)
    with ServerThread(create_app([raw], pool=pool)) as srv:
        client = OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.BadRequestError) as err:
            ask(client, "raw")
        assert "has no chat template" in err.value.message
        assert client.completions.create(model="raw", prompt="Hi", max_tokens=2, temperature=0).choices


def test_ab_route_is_sticky_per_user_and_logged(client, live):
    route = live.app.state.tunelab.router.routes["ab"]
    users = [f"user-{i}" for i in range(6)]
    got = {}
    for user in users:
        first = ask(client, "ab", max_tokens=1, user=user).model
        second = ask(client, "ab", max_tokens=1, user=user).model
        assert first == second == route.pick(user)
        got[user] = first
    rows = [json.loads(line) for line in live.ab_log.read_text().splitlines()]
    mine = [r for r in rows if r["user"] in got]
    assert len(mine) == 12
    assert all(r["route"] == "ab" and r["variant"] == got[r["user"]] and r["status"] == 200 for r in mine)
    assert all(r["outcome"] in ("stop", "length") and r["latency_s"] > 0 for r in mine)


def test_metrics_parse_as_prometheus_text(client, live):
    from prometheus_client.parser import text_string_to_metric_families

    before = _requests_ok(httpx.get(live.url + "/metrics", headers=AUTH).text, "b")
    for _ in range(3):
        ask(client, "b", max_tokens=2)
    resp = httpx.get(live.url + "/metrics", headers=AUTH)
    assert resp.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(resp.text)}
    assert _requests_ok(resp.text, "b") == before + 3
    quantiles = {s.labels["quantile"]: s.value for s in families["tunelab_request_latency_window_seconds"].samples
                 if s.labels["model"] == "b"}
    assert set(quantiles) == {"0.5", "0.95", "0.99"}
    assert 0 < quantiles["0.5"] <= quantiles["0.95"] <= quantiles["0.99"]
    assert families["tunelab_request_latency_seconds"].type == "histogram"
    tps = [s.value for s in families["tunelab_tokens_per_second"].samples if s.labels["model"] == "b"]
    assert tps and tps[0] > 0


def _requests_ok(text: str, model: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "tunelab_requests_total" and s.labels.get("model") == model
               and s.labels["status"] == "200")


def test_concurrent_requests_get_the_same_answers_as_sequential_ones(client, live):
    from concurrent.futures import ThreadPoolExecutor

    jobs = [("a", "Hi"), ("b", "Hi"), ("a", "A much longer question about the weather today?"), ("base", "Hi"),
            ("b", "Why is the sky blue?"), ("a", "Why is the sky blue?")]
    sequential = [ask(client, m, t, max_tokens=4).choices[0].message.content for m, t in jobs]
    with ThreadPoolExecutor(len(jobs)) as pool:
        parallel = list(pool.map(lambda job: ask(client, *job, max_tokens=4).choices[0].message.content, jobs))
    assert parallel == sequential


def test_client_leaving_mid_stream_frees_its_slot(live, client):
    state = live.app.state.tunelab
    body = {"model": "a", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8, "stream": True}
    with httpx.stream("POST", live.url + "/v1/chat/completions", json=body, headers=AUTH) as resp:
        first = next(resp.iter_lines())
        assert first.startswith("data: ") and json.loads(first[6:])["object"] == "chat.completion.chunk"
    deadline = time.monotonic() + 60
    while state.in_flight:
        assert time.monotonic() < deadline, "the abandoned stream still counts as in flight"
        time.sleep(0.05)
    assert ask(client, "a", max_tokens=2).choices[0].finish_reason in ("stop", "length")
