"""Every path-kind field refuses text no file system takes, and config errors quote values shortened.

The kinds (tunelab.config.refs) carry one validator, so the test walks the schema's declared fields instead of
listing keys: a new path field is covered by declaring its kind.
"""

from __future__ import annotations


import pytest

from tunelab.config import ConfigError, RunCfg, build_config
from tunelab.config.loader import SHOWN_CHARS, parse_override, shorten
from tunelab.config.refs import MAX_PATH_CHARS, ref_fields

from tests.studio.test_security import SAFE, config_with

FIELDS = list(ref_fields(RunCfg))


@pytest.mark.parametrize("key,kind,owner", FIELDS, ids=[f[0] for f in FIELDS])
def test_every_path_field_refuses_control_characters_and_overlong_text(key, kind, owner):
    shown = (key.replace("[]", "[0]"), key.replace("[]", ".0"))  # a field validator's key, pydantic's
    ok = config_with(key, owner, SAFE[kind])
    build_config(ok)  # the value itself is fine: what follows is refused for the text alone
    for bad, expected in ((SAFE[kind] + "\x00x", "control character U+0000"),
                          ("runs/a\nb", "control character U+000A"),
                          ("x" * (MAX_PATH_CHARS + 1), f"{MAX_PATH_CHARS + 1:,} characters long; a path has at "
                                                     f"most {MAX_PATH_CHARS:,}")):
        with pytest.raises(ConfigError) as e:
            build_config(config_with(key, owner, bad))
        lines = [p for p in e.value.problems if any(k + end in p for k in shown for end in (":", ".str:"))]
        assert lines and expected in lines[0], e.value.problems
        assert all(len(p) < 400 for p in e.value.problems)  # the 4 KB value is not echoed back


def test_a_path_of_path_max_characters_is_still_a_path():
    cfg = build_config({"model": {"name": "tiny-llama"}, "data": {"train": "d.jsonl"},
                        "output_dir": "r/" + "x" * (MAX_PATH_CHARS - 2)})
    assert len(cfg.output_dir) == MAX_PATH_CHARS


def test_train_refuses_a_nul_in_output_dir_before_writing_anything(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from tunelab.cli import app

    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text('model: {name: tiny-llama}\ndata: {train: d.jsonl}\noutput_dir: "runs/a\\0b"\n')
    res = CliRunner().invoke(app, ["train", "c.yaml"])
    assert res.exit_code == 2 and not isinstance(res.exception, ValueError)
    assert "output_dir: value error, holds the control character U+0000" in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]


@pytest.mark.parametrize("override, expected", [
    ("=1", "'=1': the key is empty; an override must look like key.path=value (e.g. train.lr=1e-4)"),
    (" =1", "' =1': the key is empty"),
    ("train..lr=1", "'train..lr=1': the key 'train..lr' has an empty part"),
    (".lr=1", "'.lr=1': the key '.lr' has an empty part"),
    ("train.=1", "'train.=1': the key 'train.' has an empty part"),
])
def test_an_empty_key_part_names_the_override(override, expected):
    with pytest.raises(ConfigError) as e:
        parse_override(override)
    assert e.value.source == "overrides" and len(e.value.problems) == 1 and e.value.problems[0].startswith(expected)


def test_padded_key_parts_are_the_keys():
    assert parse_override(" train . lr =0.5") == (["train", "lr"], 0.5)


def test_shorten_keeps_the_start_and_says_how_long():
    assert shorten("abc") == "abc"
    text = "y" * 60_000
    assert shorten(text) == "y" * SHOWN_CHARS + "… (60,000 characters)"


@pytest.mark.parametrize("override", ["train.lr=" + "[" * 12_000, "train.lr=[" + "train.lr=[" * 6_000,
                                      "x" * 50_000, "train.lr=" + "'" + "z" * 50_000])
def test_a_huge_override_is_not_echoed_back(override):
    with pytest.raises(ConfigError) as e:
        parse_override(override)
    assert max(len(p) for p in e.value.problems) < 400, e.value.problems
    assert "characters)" in str(e.value)


def test_a_huge_value_in_a_validation_error_is_shortened():
    with pytest.raises(ConfigError) as e:
        build_config({"model": {"name": "tiny-llama"}, "data": {"train": "d.jsonl"}, "train": {"lr": "q" * 30_000}})
    (line,) = e.value.problems
    assert line.startswith("train.lr: ") and line.endswith(f"(got '{'q' * (SHOWN_CHARS - 1)}… (30,002 characters))")
