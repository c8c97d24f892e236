"""Numbers in a config must be usable: no NaN or infinity in any float key, integers within their range.

Each of these once validated and then failed (or trained on an infinite learning rate) after the model loaded.
"""

from __future__ import annotations

import math
import re

import pytest

from tunelab.config import ConfigError, build_config, load_config, schema_lines
from tunelab.config.loader import apply_overrides

REQUIRED = {"distill.": ["distill.teacher=tiny-llama"], "ppo.": ["ppo.reward_model=runs/reward"]}


def problems(overrides: list[str]) -> list[str]:
    with pytest.raises(ConfigError) as e:
        build_config(apply_overrides({"data": {"train": "x.json"}}, overrides))
    return e.value.problems


def float_keys() -> list[tuple[str, list[str], str]]:
    """(key, extra overrides, non-finite value) for every key whose type holds a float, from the schema."""
    out = []
    for path, type_name, _default, _desc in schema_lines():
        if not re.search(r"\bfloat\b", type_name):  # not a choice such as auto|float32
            continue
        extra = next((v for k, v in REQUIRED.items() if path.startswith(k)), [])
        if path.startswith("method["):
            method, rest = path[len("method["):].split("].", 1)
            path, extra = f"method.{rest}", [f"method.name={method}"]
        bad = "[.inf, .inf]" if type_name.startswith("tuple") else "[.inf]" if "list[float]" in type_name else ".inf"
        out.append((path, extra, bad))
    return out


FLOATS = float_keys()


def test_every_float_key_was_found():
    keys = {k for k, _, _ in FLOATS}
    assert {"train.lr", "train.epochs", "selftrain.min_reward", "optim.betas", "grpo.reward_weights",
            "method.alpha", "distill.temperature", "ppo.kl_coef"} <= keys
    assert len(keys) >= 19


@pytest.mark.parametrize("key,extra,bad", FLOATS, ids=[k for k, _, _ in FLOATS])
@pytest.mark.parametrize("sign", ["", "-"])
def test_infinity_is_refused_in_every_float_key(key, extra, bad, sign):
    value = bad.replace(".inf", sign + ".inf")
    found = problems(extra + [f"{key}={value}"])
    assert any(p.startswith(key) and "finite number" in p for p in found), found


@pytest.mark.parametrize("key,extra,bad", FLOATS, ids=[k for k, _, _ in FLOATS])
def test_nan_is_refused_in_every_float_key(key, extra, bad):
    found = problems(extra + [f"{key}={bad.replace('.inf', '.nan')}"])
    assert any(p.startswith(key) and "finite number" in p for p in found), found


def test_the_reported_examples_are_refused_naming_the_key(tmp_path):
    assert problems(["train.epochs=.inf"]) == ["train.epochs: input should be a finite number (got inf)"]
    assert problems(["selftrain.min_reward=.nan"])[0].startswith("selftrain.min_reward: input should be a finite")
    assert problems(["train.epochs=20000"]) == [
        "train.epochs: input should be less than or equal to 10000 (got 20000)"]
    # a seed numpy and torch cannot take, however it is written
    for seed in (1e30, 10**30, 2**32, -1):
        with pytest.raises(ConfigError) as e:
            build_config({"data": {"train": "x.json"}, "train": {"seed": seed}})
        assert e.value.problems[0].startswith("train.seed: "), e.value.problems
    assert build_config({"data": {"train": "x.json"}, "train": {"seed": 2**32 - 1}}).train.seed == 2**32 - 1
    assert problems(["train.seed=1e30"])[0].startswith("train.seed: ")
    # an integer no tensor or counter can hold
    assert problems([f"train.max_steps={2**63}"])[0].startswith(
        f"train.max_steps: value error, {2**63} does not fit in a 64-bit integer")
    assert build_config({"data": {"train": "x.json"}, "train": {"max_steps": 2**63 - 1}}).train.max_steps == 2**63 - 1
    # YAML: 1e400 and 1.0e+400 overflow to an infinite learning rate (or stay text): both refused, with the key
    for text in ("1e400", "1.0e+400", ".inf", ".nan"):
        cfg = tmp_path / "lr.yaml"
        cfg.write_text(f"data:\n  train: x.json\ntrain:\n  lr: {text}\n")
        with pytest.raises(ConfigError) as e:
            load_config(cfg)
        assert e.value.problems[0].startswith("train.lr: input should be a finite number"), (text, e.value.problems)


def test_assignment_is_checked_too():
    cfg = build_config({"data": {"train": "x.json"}})
    with pytest.raises(ValueError, match="finite number"):
        cfg.train.lr = math.inf
    assert cfg.train.lr == 2e-4
