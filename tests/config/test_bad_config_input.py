"""Bad configs and overrides give one clear error naming the file and line (or the key), never a traceback."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.config import ConfigError, load_config
from tunelab.config.loader import parse_override

GOOD = "model:\n  name: tiny-llama\ndata:\n  train: d.jsonl\n"


def _cli(*args: str):
    result = CliRunner().invoke(app, list(args))
    text = result.output + (result.stderr if result.stderr_bytes is not None else "")
    assert result.exit_code != 0, text
    assert "Traceback" not in text and not isinstance(result.exception, (RecursionError, UnicodeDecodeError,
                                                                          TypeError)), text
    return " ".join(text.split())  # rich wraps long lines; compare on words


@pytest.mark.parametrize("name, content, expected", [
    ("latin.yaml", GOOD.encode() + b"# caf\xe9\n", "latin.yaml:5: not UTF-8 text (byte 0xe9 at byte offset 54); "
     "re-save it as UTF-8, e.g. iconv -f latin1 -t utf-8"),
    ("wide.yaml", GOOD.encode("utf-16"), "wide.yaml: saved as UTF-16 (it starts with a byte-order mark); "
     "re-save it as UTF-8"),
    ("bin.yaml", b"model:\x00\x01\x02", "bin.yaml:1: binary content (a NUL byte at byte offset 6)"),
    ("deep.yaml", b"a: " + b"[" * 6000, "deep.yaml:1: not valid YAML: nested more than 100 levels deep"),
    ("deepmap.yaml", "".join("  " * i + f"k{i}:\n" for i in range(5000)).encode(),
     "deepmap.yaml:100: not valid YAML: nested more than 100 levels deep"),
])
def test_unreadable_config_names_file_and_line(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert expected in str(e.value).replace(str(tmp_path) + "/", "")
    assert expected in _cli("config", "show", str(path)).replace(str(tmp_path) + "/", "")


def test_train_with_a_latin1_config_stops_with_the_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(GOOD.encode() + "# café\n".encode("latin-1"))
    out = _cli("train", str(path))
    assert "c.yaml:5: not UTF-8 text" in out and "re-save it as UTF-8" in out


def test_duplicate_keys_are_an_error_naming_both_lines(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("model:\n  name: tiny-llama\ndata:\n  train: d.jsonl\ntrain:\n  lr: 1e-4\n  epochs: 1\n"
                    "  lr: 3e-4\n")
    with pytest.raises(ConfigError, match=r"dup.yaml:8: not valid YAML: duplicate key 'lr' \(first on line 6, "
                                          r"again on line 8\); keep one of them"):
        load_config(path)
    out = _cli("config", "show", str(path))
    assert "duplicate key 'lr' (first on line 6, again on line 8)" in out


def test_merge_keys_may_still_be_overridden(tmp_path):
    path = tmp_path / "merge.yaml"
    path.write_text("base: &b\n  lr: 1e-4\n  epochs: 2\nmodel:\n  name: tiny-llama\ndata:\n  train: d.jsonl\n"
                    "train:\n  <<: *b\n  lr: 3e-4\n")
    with pytest.raises(ConfigError, match="base: unknown key"):  # the anchor section itself is not a config key
        load_config(path)
    path.write_text("model:\n  name: tiny-llama\ndata:\n  train: d.jsonl\ntrain: &b\n  epochs: 2\n"
                    "eval:\n  <<: {}\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert "duplicate" not in str(e.value)


@pytest.mark.parametrize("override, expected", [
    ("train.lr=[", "train.lr: the value '[' is not valid YAML: expected the node content"),
    ("train.lr=!!python/object:os.system", "train.lr: the value '!!python/object:os.system' is not valid YAML: "
     "could not determine a constructor"),
    ("train.lr=*a", "train.lr: the value '*a' is not valid YAML: found undefined alias 'a'"),
    ("train.lr=1\x00", "train.lr: the override holds the control character U+0000; remove it"),
    ("train.lr={a: 1, a: 2}", "duplicate key 'a'"),
    ("train.lr=" + "[" * 5000, "nested more than 100 levels deep"),
])
def test_bad_override_values_are_config_errors_naming_the_key(override, expected):
    with pytest.raises(ConfigError) as e:
        parse_override(override)
    assert expected in str(e.value)


@pytest.mark.parametrize("override", ["train.lr=[", "train.lr=!!python/object:os.system", "train.lr=*a"])
def test_bad_overrides_on_the_command_line(tmp_path, override):
    path = tmp_path / "c.yaml"
    path.write_text(GOOD)
    for cmd in (["train"], ["config", "show"]):
        out = _cli(*cmd, str(path), override)
        assert "train.lr: the value" in out and "quote it to pass it as text" in out


def test_export_format_is_checked_before_the_run_is_loaded(tmp_path):
    out = _cli("export", str(tmp_path / "no-such-run"), "--format", "zip")
    assert "unknown export format 'zip'; choose from safetensors, merged, gguf" in out
    out = _cli("export", str(tmp_path / "no-such-run"), "--format", "gguf", "--quant", "q9")
    assert "quant='q9' is not a GGUF type" in out


def test_serve_template_file_in_another_encoding_is_a_parameter_error(tmp_path):
    import typer

    from tunelab.cli.serve import parse_model_arg

    path = tmp_path / "t.jinja"
    path.write_bytes("{{ messages }} café".encode("latin-1"))
    with pytest.raises(typer.BadParameter, match=r"t.jinja:1: not UTF-8 text \(byte 0xe9 at byte offset 18\)"):
        parse_model_arg(f"m=tiny-llama,template={path}")
