"""`method.init_from: RUN`: prompt tuning, prefix tuning and P-tuning v2 warm-started from a previous run."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import tunelab
from tunelab.config import ConfigError, build_config
from tunelab.methods import prompt as prompt_method
from tunelab.models import load_model

METHODS = {"prompt": {"num_virtual_tokens": 4},
           "ptuning_v2": {"num_virtual_tokens": 4},
           "prefix": {"num_virtual_tokens": 4, "encoder_hidden_size": 16}}


def _cfg(tmp, name: str, method: dict, data, **train) -> dict:
    return {"model": {"name": "tiny-llama"},
            "data": {"train": str(data), "max_samples": 8, "max_length": 64, "val_size": 0.0},
            "method": method,
            "train": {"max_steps": 2, "batch_size": 4, "lr": 5e-2, "seed": 0, "report": False, **train},
            "output_dir": str(tmp / name)}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("d") / "zh.jsonl"
    path.write_text("".join(json.dumps({"instruction": f"把第{i}句翻译成英文。", "input": "", "output": f"Sentence {i}."},
                                       ensure_ascii=False) + "\n" for i in range(8)), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def previous(tmp_path_factory, data):
    """One finished 2-step run per method (the 'source language' run)."""
    root = tmp_path_factory.mktemp("prev")
    return {name: tunelab.train(_cfg(root, name, {"name": name, **opts}, data), progress=False)
            for name, opts in METHODS.items()}


@pytest.mark.parametrize("name", list(METHODS))
def test_warm_start_reproduces_the_saved_prompt(previous, name):
    saved = load_file(str(previous[name].path / "adapter" / "adapter_model.safetensors"))["prompt_embeddings"]
    cfg = build_config({"model": {"name": "tiny-llama"}, "data": {"train": "x.jsonl"},
                        "method": {"name": name, **METHODS[name], "init_from": str(previous[name].path)}}).method
    fresh = prompt_method.apply(load_model("tiny-llama"), cfg.model_copy(update={"init_from": None}))
    warm = prompt_method.apply(load_model("tiny-llama"), cfg)
    with torch.no_grad():
        got = warm.get_prompt_embedding_to_save("default")
        assert not torch.allclose(fresh.get_prompt_embedding_to_save("default"), saved, atol=1e-3)
    # prefix: reached through the MLP, solved by least squares, so equal to float precision
    assert torch.allclose(got, saved, atol=1e-4), (got - saved).abs().max()
    if name == "prefix":  # the MLP still trains: the warm start is not a frozen copy
        assert warm.prompt_encoder["default"].transform[-1].weight.requires_grad


def test_warm_started_run_trains_on_from_the_previous_prompt(previous, data, tmp_path):
    """Through tunelab train: with a vanishing learning rate the new run's prompt is the previous run's, and
    its first loss is below a cold start's (the previous run already learned this data)."""
    prev = previous["ptuning_v2"]
    method = {"name": "ptuning_v2", **METHODS["ptuning_v2"]}
    warm = tunelab.train(_cfg(tmp_path, "warm", {**method, "init_from": str(prev.path)}, data, max_steps=1, lr=1e-9),
                         progress=False)
    cold = tunelab.train(_cfg(tmp_path, "cold", method, data, max_steps=1, lr=1e-9), progress=False)

    def prompt_of(run):
        return load_file(str(run.path / "adapter" / "adapter_model.safetensors"))["prompt_embeddings"]

    def first_loss(run):
        return json.loads((run.path / "metrics.jsonl").read_text(encoding="utf-8").splitlines()[0])["loss"]

    assert torch.allclose(prompt_of(warm), prompt_of(prev), atol=1e-6)
    assert not torch.allclose(prompt_of(cold), prompt_of(prev), atol=1e-3)
    assert first_loss(warm) < first_loss(cold)
    assert warm.config.method.init_from == str(prev.path)


def test_bad_init_from_is_named(previous, tmp_path):
    def make(method: dict):
        cfg = build_config({"model": {"name": "tiny-llama"}, "data": {"train": "x.jsonl"}, "method": method})
        return prompt_method.apply(load_model("tiny-llama"), cfg.method)

    with pytest.raises(ValueError, match=r"method.init_from: .* was trained with method 'prompt', this run uses "
                                         r"'ptuning_v2'; warm-start from a ptuning_v2 run"):
        make({"name": "ptuning_v2", "num_virtual_tokens": 4, "init_from": str(previous["prompt"].path)})
    with pytest.raises(ValueError, match=r"prompt is 4 x 64, this run's is 8 x 64; set method.num_virtual_tokens=4"):
        make({"name": "prompt", "num_virtual_tokens": 8, "init_from": str(previous["prompt"].path)})
    with pytest.raises(ValueError, match="is not a run folder"):
        make({"name": "prompt", "num_virtual_tokens": 4, "init_from": str(tmp_path)})
    with pytest.raises(ConfigError, match="encoder_hidden_size .2. must be >= num_virtual_tokens"):
        build_config({"model": {"name": "tiny-llama"}, "data": {"train": "x.jsonl"},
                      "method": {"name": "prefix", "num_virtual_tokens": 4, "encoder_hidden_size": 2,
                                 "init_from": str(previous["prefix"].path)}})
    with pytest.raises(ConfigError, match="init_text and init_from both"):
        build_config({"model": {"name": "tiny-llama"}, "data": {"train": "x.jsonl"},
                      "method": {"name": "prompt", "init_text": "hi", "init_from": str(previous["prompt"].path)}})
