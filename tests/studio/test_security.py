"""The studio's path and code rules, generated from the schema: every field that declares a path or code kind
(tunelab.config.refs) gets an outside path and a code reference, and each must be refused naming its key."""

from __future__ import annotations

import typing

import pytest
from pydantic import Field

from tests.studio.conftest import upload
from tunelab.config import ConfigError, RunCfg, build_config
from tunelab.config import refs as refs_mod
from tunelab.config.base import Section
from tunelab.config.refs import DataPath, Ref, ref_fields, refs
from tunelab.studio.forms import check_config, studio_problems

SAFE = {"data": "datasets/hello.json", "model": "tiny-llama", "run": "runs/reward-run", "template": "chatml",
        "checkpoint": "auto", "output": "runs/x", "code": "builtin:length"}
"""A value of each kind the studio accepts (to fill a section's other required fields)."""

BASE = {"model": {"name": "tiny-llama"}, "data": {"train": "datasets/hello.json"}, "train": {"max_steps": 3}}


def config_with(key: str, owner: type, value: str) -> dict:
    """A valid config dict with `key` (a ref_fields key: `a.b`, `a.b[].c`) set to `value`, built from the schema."""
    import copy

    data = copy.deepcopy(BASE)
    node, parts = data, key.split(".")
    for i, part in enumerate(parts):
        name, is_list = part.removesuffix("[]"), part.endswith("[]")
        if i == len(parts) - 1:
            node[name] = [value] if is_list else value
        elif is_list:
            child: dict = {}
            node[name] = [child]
            node = child
        else:
            node = node.setdefault(name, {})
    kinds = {k: kind for k, kind, _ in ref_fields(owner)}
    for fname, f in owner.model_fields.items():
        if typing.get_origin(f.annotation) is typing.Literal and fname == "name":
            node.setdefault("name", f.default)  # the member of a discriminated union (method.name: prompt)
        elif f.is_required() and fname not in node:
            node[fname] = SAFE[kinds[fname]]
    return data


FIELDS = list(ref_fields(RunCfg))


def test_every_field_the_issue_named_declares_a_kind():
    declared = {key: kind for key, kind, _ in FIELDS}
    assert declared == {
        "model.name": "model", "model.chat_template": "template", "data.train": "data",
        "data.train[].path": "data", "data.train[].eval": "data", "data.eval": "data", "data.registry": "data",
        "method.tokenizer": "model", "method.init_from": "run", "train.resume": "checkpoint", "optim.ewc.data": "data",
        "grpo.rewards[]": "code", "distill.teacher": "model", "ppo.reward_model": "run",
        "selftrain.unlabelled": "data", "selftrain.rewards[]": "code", "domain.target": "data", "output_dir": "output"}
    schema = str(RunCfg.model_json_schema())
    assert schema.count(refs_mod.REF_SCHEMA_KEY) >= len(declared)


def test_the_safe_values_pass(client, settings, alpaca_bytes):
    upload(client, "hello.json", alpaca_bytes)
    for key, kind, owner in FIELDS:
        check_config(config_with(key, owner, SAFE[kind]), settings)  # no ConfigError


@pytest.mark.parametrize("key,kind,owner", FIELDS, ids=[f[0] for f in FIELDS])
def test_outside_paths_and_code_are_refused_in_every_declared_field(client, settings, alpaca_bytes, tmp_path,
                                                                     key, kind, owner):
    upload(client, "hello.json", alpaca_bytes)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "evil.py").write_text("def fn(*a):\n    raise SystemExit('ran user code')\n")
    shown = key.replace("[]", "[0]")
    for bad in (str(outside / "evil.py") + ":fn", "/etc/passwd", "../../../etc/passwd", "~/.ssh/id_rsa"):
        if key == "data.registry":  # the config takes only a .json registry there; the paths stay outside
            bad += ".json"
        data = config_with(key, owner, bad)
        build_config(data)  # the config itself is valid: only the studio's rules refuse it
        with pytest.raises(ConfigError) as e:
            check_config(data, settings)
        assert any(p.startswith(f"{shown}: ") for p in e.value.problems), (key, bad, e.value.problems)
        if key == "output_dir":
            continue  # the API sets output_dir to runs/<name> itself
        r = client.post("/api/jobs", json={"name": "x", "config": data})
        assert r.status_code == 422, (key, bad, r.text)
        assert any(p.startswith(f"{shown}: ") for p in r.json()["problems"]), (key, bad, r.json())
    assert client.get("/api/jobs").json() == []


def test_the_reported_bypasses_are_refused(client, alpaca_bytes):
    """The cases from the report, written out by hand: each once passed the studio's checks."""
    upload(client, "hello.json", alpaca_bytes)
    cases = {
        "selftrain.rewards[0]": {"selftrain": {"mode": "rejection", "rewards": ["/any/file.py:fn"]}},
        "distill.teacher": {"stage": "distill", "distill": {"teacher": "/usr/lib"}},
        "ppo.reward_model": {"stage": "ppo", "ppo": {"reward_model": "/tmp"}},
        "selftrain.unlabelled": {"stage": "selftrain", "selftrain": {"unlabelled": "/etc/passwd"}},
        "method.tokenizer": {"method": {"name": "prompt", "tokenizer": "/usr/share"}},
    }
    for key, extra in cases.items():
        r = client.post("/api/config/validate", json={"name": "x", "config": {**BASE, **extra}})
        assert r.status_code == 422, (key, r.text)
        assert any(p.startswith(f"{key}: ") for p in r.json()["problems"]), r.json()
        assert r.json()["fields"][key.split("[")[0]], r.json()  # shown next to the form field


def test_a_new_field_with_a_path_kind_is_checked_without_touching_the_studio(settings):
    class NotesCfg(Section):
        notes: DataPath | None = Field(None, description="A file the studio has never heard of.")

    class ExtendedCfg(RunCfg):
        extra: NotesCfg = Field(default_factory=NotesCfg)

    cfg = ExtendedCfg.model_validate({**BASE, "extra": {"notes": "/etc/passwd"}})
    assert ("extra.notes", "data", "/etc/passwd") in list(refs(cfg))
    assert any(p.startswith("extra.notes: data file '/etc/passwd' is outside the studio's folders")
               for p in studio_problems(cfg, settings))
    ok = ExtendedCfg.model_validate({**BASE, "extra": {"notes": "datasets/notes.json"}})
    assert studio_problems(ok, settings) == []


def test_a_kind_the_studio_has_no_rule_for_is_refused(settings, monkeypatch):
    monkeypatch.setitem(refs_mod.KINDS, "weights", "raw weights to load")

    class WeightsCfg(Section):
        init: typing.Annotated[str, Ref("weights")] | None = None

    class ExtendedCfg(RunCfg):
        extra: WeightsCfg = Field(default_factory=WeightsCfg)

    cfg = ExtendedCfg.model_validate({**BASE, "extra": {"init": "datasets/inside.bin"}})
    assert studio_problems(cfg, settings) == [
        "extra.init: the studio does not accept values of kind 'weights' ('datasets/inside.bin'); set it with the CLI"]


def test_a_symlink_out_of_the_dataset_folder_is_refused(client, settings, alpaca_bytes):
    upload(client, "hello.json", alpaca_bytes)
    (settings.datasets / "link.json").symlink_to("/etc/passwd")
    r = client.post("/api/config/validate", json={"name": "x", "config": {
        **BASE, "selftrain": {"unlabelled": "datasets/link.json"}}})
    assert r.status_code == 422
    assert r.json()["problems"] == ["selftrain.unlabelled: data file 'datasets/link.json' is outside the studio's "
                                    f"folders ({settings.datasets}); use a file from the dataset library or a model "
                                    "under a model root"]


def test_remote_code_stays_refused(client, alpaca_bytes):
    upload(client, "hello.json", alpaca_bytes)
    r = client.post("/api/config/validate", json={"name": "x", "config": {
        **BASE, "model": {"name": "tiny-llama", "trust_remote_code": True}}})
    assert r.status_code == 422 and r.json()["fields"]["model.trust_remote_code"]
