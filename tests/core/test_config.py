"""Config errors name the key path, the bad value and the fix; overrides and YAML load as documented."""

import pytest
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.config import ConfigError, build_config, dump_config, load_config


def problems(data):
    with pytest.raises(ConfigError) as e:
        build_config(data, "sft.yaml")
    return e.value.problems, str(e.value)


def test_unknown_key_suggests_the_closest_valid_key():
    probs, text = problems({"data": {"train": "x.json"}, "train": {"lerning_rate": 1e-4}})
    assert probs == ["train.lerning_rate: unknown key; did you mean train.lr?"]
    assert text.startswith("1 problem in sft.yaml")


def test_all_problems_reported_at_once_with_values():
    probs, _ = problems({"data": {"train": "x.json", "val_size": 1.5}, "method": {"name": "lora", "r": 0},
                         "train": {"epochs": "many"}})
    joined = "\n".join(probs)
    assert len(probs) == 3
    assert "method.r: input should be greater than 0 (got 0)" in joined
    assert "data.val_size" in joined and "1.5" in joined
    assert "train.epochs" in joined and "'many'" in joined


def test_unknown_method_lists_choices_and_method_keys_follow_the_method():
    probs, _ = problems({"data": {"train": "x.json"}, "method": {"name": "lorax"}})
    from tunelab.methods import METHODS

    assert probs == [f"method.name: 'lorax' is not a method; choose from {', '.join(METHODS)}"]
    assert "full, freeze, lora, qlora" in probs[0]
    probs, _ = problems({"data": {"train": "x.json"}, "method": {"name": "full", "r": 8}})
    assert probs == ["method.r: unknown key; valid keys: name, train_vision, train_projector"]


def test_method_options_without_a_name_ask_for_the_name():
    probs, _ = problems({"data": {"train": "x.json"}, "method": {"r": 4}})
    assert probs[0].startswith("method.name: missing; say which method these options are for (one of full, ")


def test_missing_required_section():
    probs, _ = problems({})
    assert probs == ["data: required but missing"]


def test_yaml_and_overrides(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("data: {train: a.json}\nmethod: {name: lora, r: 4}\n")
    cfg = load_config(cfg_file, ["train.lr=1e-3", "method.target_modules=[q_proj, v_proj]", "data.eval=null"])
    assert cfg.train.lr == 1e-3 and cfg.method.r == 4 and cfg.method.target_modules == ["q_proj", "v_proj"]
    assert cfg.data.eval is None
    assert "lr: 0.001" in dump_config(cfg)


def test_bad_yaml_names_the_line(tmp_path):
    cfg_file = tmp_path / "bad.yaml"
    cfg_file.write_text("data:\n  train: a.json\n  eval: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d: not valid YAML: expected"):
        load_config(cfg_file)


def test_override_without_equals_is_explained():
    with pytest.raises(ConfigError, match="must look like key.path=value"):
        load_config(None, ["train.lr"])


def test_cli_config_show_prints_defaults_and_errors_in_one_line(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("data: {train: a.json}\n")
    runner = CliRunner()
    res = runner.invoke(app, ["config", "show", str(cfg_file), "train.batch_size=2"])
    assert res.exit_code == 0, res.output
    assert "batch_size: 2" in res.output and "scheduler: cosine" in res.output
    res = runner.invoke(app, ["config", "show", str(cfg_file), "train.lerning_rate=1"])
    assert res.exit_code == 2
    assert "train.lerning_rate: unknown key; did you mean train.lr?" in res.output


def test_train_help_documents_every_key():
    from tunelab.config import schema_lines

    res = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0
    for path, *_ in schema_lines():
        assert path in res.output, path


@pytest.mark.parametrize("section", ["grpo", "selftrain"])
def test_reward_weights_need_one_number_per_reward(section):
    cfg = {"data": {"train": "x.json"}, section: {"rewards": ["builtin:length", "builtin:answer_match"],
                                                  "reward_weights": [1.0]}}
    with pytest.raises(ConfigError, match=rf"{section}.*reward_weights has 1 numbers for 2 rewards"):
        build_config(cfg)
    cfg[section]["reward_weights"] = [1.0, 0.5]
    assert getattr(build_config(cfg), section).reward_weights == [1.0, 0.5]
