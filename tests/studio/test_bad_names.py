"""Names and paths the OS cannot take (a NUL byte, control characters, lone surrogates, over-long names), unknown
built-in rewards and deeply nested query JSON: each is a 4xx naming what was wrong, never a 500."""

from __future__ import annotations

import json
import re

import pytest

from tests.studio.conftest import upload
from tests.studio.test_security import FIELDS, config_with
from tunelab.studio.paths import MAX_PART_BYTES, StudioError, check_chars, inside, safe_name


@pytest.mark.parametrize("text, words", [
    ("ok.json\x00", "control character U+0000 at position 7"),
    ("a\nb", "control character U+000A"),
    ("a\x7fb", "control character U+007F"),
    ("a\ud800b", "lone UTF-16 surrogate"),
    ("d/" + "x" * (MAX_PART_BYTES + 1), "too long"),
    ("/x" * 3000, "too long"),
])
def test_check_chars_refuses_what_the_os_cannot_take(text, words):
    with pytest.raises(StudioError, match=re.escape(words)):
        check_chars(text)


def test_inside_and_safe_name_refuse_nul_instead_of_raising_valueerror(tmp_path):
    with pytest.raises(StudioError, match="control character U\\+0000"):
        inside(tmp_path / "ok.json\x00.txt", [tmp_path], "dataset")
    with pytest.raises(StudioError, match="dataset 'x' contains the control character"):
        inside(tmp_path / "a\x00", [tmp_path], "dataset", shown="'x'")  # `shown` names it as the user typed it
    with pytest.raises(StudioError, match="control character"):
        safe_name("data\x00.json")
    assert safe_name("é" * 300 + ".json").endswith("é")  # a long upload name is still cut, not refused
    assert inside(tmp_path / "ok.json", [tmp_path]) == tmp_path / "ok.json"


@pytest.mark.parametrize("name", ["ok.json\x00", "ok.json\x00.txt", "ok\n.json", "x" * 300 + ".json"])
def test_a_bad_dataset_name_in_the_url_is_400_on_every_dataset_route(client, settings, alpaca_bytes, name):
    upload(client, "ok.json", alpaca_bytes)
    quoted = name.replace("\x00", "%00").replace("\n", "%0A")
    for method, url, kw in [("GET", f"/api/datasets/{quoted}/inspect", {}), ("DELETE", f"/api/datasets/{quoted}", {}),
                            ("PUT", f"/api/datasets/{quoted}/columns", {"json": {"columns": {}}}),
                            ("POST", f"/api/datasets/{quoted}/prepare", {"json": {"op": "clean"}})]:
        r = client.request(method, url, **kw)
        assert r.status_code == 400, (method, url, r.text)
        assert "control character" in r.json()["error"] or "too long" in r.json()["error"], r.json()
    assert (settings.datasets / "ok.json").is_file()  # nothing was deleted


@pytest.mark.parametrize("url", ["/api/runs/r%00/metrics", "/api/runs/r%00/evals", "/api/runs/compare?a=r%00&b=r"])
def test_a_nul_in_a_run_name_is_400(client, url):
    r = client.get(url)
    assert r.status_code == 400 and "control character" in r.json()["error"], r.text


INPUT_FIELDS = [f for f in FIELDS if f[0] != "output_dir"]  # the API sets output_dir to runs/<name> itself


@pytest.mark.parametrize("key,kind,owner", INPUT_FIELDS, ids=[f[0] for f in INPUT_FIELDS])
def test_a_nul_in_any_path_field_of_a_job_config_is_422_naming_the_key(client, alpaca_bytes, key, kind, owner):
    upload(client, "hello.json", alpaca_bytes)
    section = key.split("[")[0]  # data.train[].path: a NUL in the path also makes data.train's task name invalid
    data = config_with(key, owner, "datasets/hello.json\x00.txt")
    for url in ("/api/config/validate", "/api/estimate", "/api/jobs"):
        r = client.post(url, json={"name": "x", "config": data})
        assert r.status_code == 422, (key, url, r.text)
        assert any(p.startswith(section) for p in r.json()["problems"]), (key, url, r.json())
    assert client.get("/api/jobs").json() == []


@pytest.mark.parametrize("section", ["grpo", "selftrain"])
@pytest.mark.parametrize("ref", ["builtin:../../evil", "builtin:nope", "builtin:"])
def test_a_builtin_reward_must_exist(client, alpaca_bytes, section, ref):
    upload(client, "hello.json", alpaca_bytes)
    extra = {"stage": "grpo", "grpo": {"rewards": ["builtin:length", ref]}} if section == "grpo" else \
        {"stage": "selftrain", "selftrain": {"mode": "rejection", "rewards": ["builtin:length", ref]}}
    config = {"model": {"name": "tiny-llama"}, "data": {"train": "datasets/hello.json"}, **extra}
    r = client.post("/api/config/validate", json={"name": "x", "config": config})
    assert r.status_code == 422, r.text
    problems = r.json()["problems"]
    assert any(p.startswith(f"{section}.rewards[1]: ") for p in problems), problems
    assert not any(p.startswith(f"{section}.rewards[0]") for p in problems), problems  # builtin:length is fine
    if ref != "builtin:":
        assert any("choose one of: answer_match, correct_final_number, correct_number, format_regex, length" in p for p in problems), problems


def test_deeply_nested_columns_query_is_400(client, alpaca_bytes):
    upload(client, "ok.json", alpaca_bytes)
    for text, words in [('{"a":' * 2000 + "1" + "}" * 2000, "nested too deeply"),
                        ("[" * 150 + "]" * 150, "nested more than 100 levels"),
                        (json.dumps({"instruction": "\ud800"}), "surrogate")]:
        r = client.get("/api/datasets/ok.json/inspect", params={"columns": text, "model": ""})
        assert r.status_code == 400, r.text
        assert r.json()["error"].startswith("columns: ") and words in r.json()["error"], r.json()
        assert len(r.text) < 1000  # the query is not echoed back



@pytest.mark.parametrize("method, url, kw, field", [
    ("POST", "/api/chat", {"json": {"run": "r", "messages": "x" * 100_000}}, "messages"),
    ("POST", "/api/chat", {"json": {"run": "r", "messages": [], "max_new_tokens": 10**30}}, "max_new_tokens"),
    ("GET", "/api/datasets/ok.json/inspect?max_length=" + "9" * 50_000, {}, "max_length"),
    ("GET", "/api/jobs/abc", {}, "job_id"),
    ("POST", "/api/jobs", {"content": b"{not json", "headers": {"Content-Type": "application/json"}}, "body"),
])
def test_a_request_of_the_wrong_shape_is_422_with_one_error_line_and_no_echo(client, method, url, kw, field):
    r = client.request(method, url, **kw)
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error"].startswith(f"{field}: "), body  # the page shows `error`, as for every other refusal
    assert body["detail"] and all("input" not in e for e in body["detail"])
    assert len(r.text) < 2000  # the 100,000-character value is not sent back


def test_a_lone_surrogate_in_a_chat_message_is_400_before_the_stream(client, settings):
    (settings.runs / "r").mkdir()
    (settings.runs / "r" / "config.yaml").write_text("model: {name: tiny-llama}\n")  # enough for run_path
    raw = json.dumps({"run": "r", "messages": [{"role": "user", "content": "hi \ud800"}]})  # sent as \ud800
    r = client.post("/api/chat", content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["error"].startswith("chat: field 'messages[0].content' holds a lone UTF-16 surrogate"), r.json()
