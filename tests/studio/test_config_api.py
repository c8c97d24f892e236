"""The New-job form: generated from the schema, validated exactly like the CLI, plus the studio's path rules."""

from __future__ import annotations

import yaml

from tests.studio.conftest import upload
from tunelab.config import ConfigError, load_config, schema_lines
from tunelab.config.loader import apply_overrides, build_config
from tunelab.studio.forms import config_from_form, form_fields

GOOD = {"model.name": "tiny-llama", "data.train": "datasets/hello.json", "method.name": "lora",
        "train.max_steps": "3", "train.batch_size": "2"}


def test_form_has_every_schema_key_with_help_and_its_real_default():
    fields = {(f["key"], f["method"]): f for f in form_fields()}
    for path, _type, _default, desc in schema_lines():
        if path == "method.name":
            continue
        key, method = path, None
        if path.startswith("method["):
            method, rest = path[len("method["):].split("].", 1)
            key = f"method.{rest}"
        assert (key, method) in fields, path
        assert fields[(key, method)]["help"] == desc
    # each default, typed back into the form, gives the schema's own default value
    base = build_config({"data": {"train": "x"}}).model_dump(mode="json")
    for f in form_fields():
        if f["method"] or f["required"] or f["key"] == "method.name" or f["default"] == "":
            continue
        got = config_from_form({f["key"]: f["default"]})
        node_got, node_ref = got, base
        for part in f["key"].split("."):
            if node_ref is None:  # a section that is off by default (e.g. optim.ewc)
                break
            node_got, node_ref = node_got[part], node_ref[part]
        if node_ref is None:
            continue
        if isinstance(node_ref, list) and node_ref and isinstance(node_got, list):
            node_got = list(node_got)
        assert node_got == node_ref or list(node_got) == list(node_ref), f["key"]


def test_validate_returns_the_yaml_the_cli_reads(client, settings, alpaca_bytes):
    upload(client, "hello.json", alpaca_bytes)
    r = client.post("/api/config/validate", json={"name": "my run!", "values": GOOD})
    assert r.status_code == 200, r.text
    body = r.json()
    data = yaml.safe_load(body["yaml"])
    assert data["output_dir"] == "runs/my-run" and data["train"]["max_steps"] == 3
    assert body["cli"] == f"cd {settings.data_dir} && tunelab train my-run.yaml"
    cfg_path = settings.data_dir / "my-run.yaml"
    cfg_path.write_text(body["yaml"])
    cfg = load_config(cfg_path)  # the CLI's loader accepts it unchanged
    assert (cfg.model.name, cfg.method.name, cfg.train.batch_size) == ("tiny-llama", "lora", 2)


def test_malformed_config_gives_the_cli_error_lines_by_field(client, alpaca_bytes):
    upload(client, "hello.json", alpaca_bytes)
    values = {**GOOD, "method.r": "0", "train.lerning_rate": "1e-4", "train.scheduler": "sometimes"}
    r = client.post("/api/config/validate", json={"name": "x", "values": values})
    assert r.status_code == 422
    body = r.json()
    # the reference: the same values as CLI overrides through the CLI's own loader
    overrides = [f"{k}={v}" for k, v in values.items()] + ["output_dir=runs/x"]
    try:
        build_config(apply_overrides({}, overrides), "form")
        raise AssertionError("expected a ConfigError")
    except ConfigError as e:
        assert sorted(body["problems"]) == sorted(e.problems)
    assert body["fields"]["method.r"] == ["method.r: input should be greater than 0 (got 0)"]
    assert body["fields"]["train.scheduler"][0].startswith("train.scheduler: input should be 'cosine'")
    assert body["fields"][""] == ["train.lerning_rate: unknown key; did you mean train.lr?"]
    r = client.post("/api/config/validate", json={"name": "x", "values": {**GOOD, "train.lr": "[1, "}})
    assert r.status_code == 422 and r.json()["problems"][0].startswith("train.lr: not a valid value")


def test_paths_and_code_outside_the_studio_are_refused(client, alpaca_bytes):
    upload(client, "hello.json", alpaca_bytes)
    cases = {
        "data.train": ("../../etc/passwd", "data.train: data file '../../etc/passwd' is outside the studio's folders"),
        "data.eval": ("/etc/hosts", "data.eval: data file '/etc/hosts' is outside"),
        "model.name": ("/usr/lib", "model.name: model '/usr/lib' is outside"),
        "model.trust_remote_code": (True, "model.trust_remote_code: the studio never runs code"),
        "grpo.rewards": ("[my_rewards.py:score]", "grpo.rewards[0]: my_rewards.py:score: the studio runs built-in"),
    }
    for key, (value, message) in cases.items():
        r = client.post("/api/config/validate", json={"name": "x", "values": {**GOOD, key: value}})
        assert r.status_code == 422, key
        assert any(p.startswith(message) for p in r.json()["fields"][key]), r.json()
    r = client.post("/api/jobs", json={"name": "x", "values": {**GOOD, "data.train": "../../etc/passwd"}})
    assert r.status_code == 422 and client.get("/api/jobs").json() == []


def test_models_list_aliases_and_local_models(client, settings):
    (settings.model_roots[0] / "mine").mkdir()
    (settings.model_roots[0] / "mine" / "config.json").write_text("{}")
    (settings.model_roots[0] / "small.gguf").write_bytes(b"GGUF")
    names = {m["name"]: m["kind"] for m in client.get("/api/models").json()}
    assert names["tiny-llama"] == "alias" and names["smollm2-135m"] == "alias"
    assert names["models/mine"] == "hf_dir" and names["models/small.gguf"] == "gguf"
    r = client.post("/api/config/validate", json={"name": "x", "values": {**GOOD, "model.name": "models/small.gguf",
                                                                          "data.train": "datasets/none.json"}})
    assert "model.name" not in r.json().get("fields", {})


def test_schema_endpoint_serves_fields_and_json_schema(client):
    body = client.get("/api/schema").json()
    assert body["json_schema"]["title"] == "RunCfg"
    assert {f["key"] for f in body["fields"]} >= {"model.name", "data.train", "method.r", "train.lr", "stage"}
    assert client.get("/openapi.json").json()["info"]["title"] == "tunelab studio"


def test_page_assets_are_bundled_and_api_docs_work_offline(client):
    import re
    from pathlib import Path

    import tunelab.studio

    static = Path(tunelab.studio.__file__).parent / "static"
    for f in static.iterdir():
        urls = set(re.findall(r"https?://[^\s\"')]+", f.read_text(encoding="utf-8")))
        assert urls <= {"http://www.w3.org/2000/svg"}, f"{f.name} loads {urls}"
    page = client.get("/docs")
    assert page.status_code == 200 and "/openapi.json" in page.text and "<script src=" not in page.text
    assert client.get("/static/app.js").status_code == 200


def test_chat_refuses_unknown_runs_and_bad_messages(client, settings):
    r = client.post("/api/chat", json={"run": "../../etc", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code in (400, 404)
    r = client.post("/api/chat", json={"run": "nope", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 404 and r.json()["error"].startswith("no run 'nope'")


def test_method_without_a_valid_name_points_at_method_name(client, alpaca_bytes):
    upload(client, "hello.json", alpaca_bytes)
    r = client.post("/api/config/validate", json={"name": "x", "values": {**GOOD, "method.name": "lorax"}})
    assert r.status_code == 422
    assert list(r.json()["fields"]) == ["method.name"]


def test_form_values_get_the_strict_yaml_reader(client, alpaca_bytes):
    upload(client, "hello.json", alpaca_bytes)
    r = client.post("/api/config/validate", json={"name": "x", "values": {**GOOD, "train.lr": "{a: 1, a: 2}"}})
    assert r.status_code == 422 and "duplicate key" in r.json()["problems"][0]
    deep = "[" * 5000 + "]" * 5000
    r = client.post("/api/config/validate", json={"name": "x", "values": {**GOOD, "train.lr": deep}})
    assert r.status_code == 422 and r.json()["problems"][0].startswith("train.lr: not a valid value")
