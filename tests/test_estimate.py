"""estimate_run: parameter counts against the real models, memory and time against hand-computed formulas."""

from __future__ import annotations

import math

import pytest
import torch

from tunelab.config import build_config
from tunelab.estimate import EstimateError, activation_bytes, estimate_run, meta_model
from tunelab.methods import count_parameters, get_method
from tunelab.models import load_model
from tunelab.models.tiny import tiny_config


def cfg_of(**sections):
    data = {"model": {"name": "tiny-llama"}, "data": {"train": "x.jsonl", "max_length": 16}}
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    return build_config(data)


@pytest.mark.parametrize("method", [{"name": "lora", "r": 4}, {"name": "full"}, {"name": "freeze", "layers": 1},
                                    {"name": "ia3"}])
def test_params_equal_the_real_model_with_the_method(method):
    cfg = cfg_of(method=method)
    est = estimate_run(cfg, 10, None, "cpu")
    real = get_method(method["name"]).apply(load_model("tiny-llama"), cfg.method)
    trainable, total = count_parameters(real)
    assert (est["params"]["trainable"], est["params"]["total"]) == (trainable, total)


def test_lora_count_matches_the_hand_formula_and_no_weights_exist():
    # tiny-llama: hidden 64, kv 32, mlp 128, 2 layers; LoRA adds r·(in + out) per linear
    per_layer = (64 + 64) + (64 + 32) * 2 + (64 + 64) + (64 + 128) * 3
    model, _ = meta_model(cfg_of(method={"name": "lora", "r": 8}))
    assert count_parameters(model)[0] == 2 * 8 * per_layer
    assert all(p.device.type == "meta" for p in model.parameters())


def test_qlora_uses_lora_adapters_and_a_4bit_base():
    lora = estimate_run(cfg_of(method={"name": "lora"}), 10, None, "cuda")
    qlora = estimate_run(cfg_of(method={"name": "qlora"}), 10, None, "cuda")
    assert qlora["params"] == lora["params"]
    assert qlora["memory"]["weights_bytes"] < lora["memory"]["weights_bytes"]
    assert qlora["optimizer"] == "paged_adamw_8bit" and lora["optimizer"] == "adamw"


def test_smollm2_without_a_cached_folder_uses_its_known_config(monkeypatch, tmp_path):
    reference = count_parameters(load_model("smollm2-135m"))[1]  # from the real (cached) weights
    cfg = cfg_of(model={"name": "smollm2-135m"}, method={"name": "full"})
    assert estimate_run(cfg, 10, None, "cpu")["params"]["total"] == reference  # its cached config.json
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path))  # nothing converted there
    assert estimate_run(cfg, 10, None, "cpu")["params"]["total"] == reference


def test_memory_parts_follow_the_documented_formulas():
    cfg = cfg_of(method={"name": "full"}, train={"batch_size": 1})
    est = estimate_run(cfg, 10, None, "cpu")
    n = est["params"]["total"]
    mem = est["memory"]
    assert mem["weights_bytes"] == 4 * n and mem["gradients_bytes"] == 4 * n
    assert mem["optimizer_bytes"] == 8 * n  # AdamW: two fp32 states
    # per token per layer 7h + 2kv + 4I = 448 + 64 + 512 values; 2 layers; fp32; logits fp32 + fp32 copy
    layers = 16 * 4 * 2 * (7 * 64 + 2 * 32 + 4 * 128)
    assert mem["activations"] == {"layers": layers, "logits": 16 * 49152 * 8, "total": layers + 16 * 49152 * 8}
    assert mem["total_bytes"] == 16 * n + layers + 16 * 49152 * 8
    assert mem["total_gib"] == pytest.approx(mem["total_bytes"] / 2**30)
    eight_bit = estimate_run(cfg_of(method={"name": "full"}, optim={"name": "adamw_8bit"}), 10, None, "cpu")
    assert eight_bit["memory"]["optimizer_bytes"] == 2 * n
    factored = estimate_run(cfg_of(method={"name": "full"}, optim={"name": "adafactor"}), 10, None, "cpu")
    assert 0 < factored["memory"]["optimizer_bytes"] < 2 * n


def test_activations_grow_with_batch_and_shrink_with_checkpointing():
    config = tiny_config("tiny-llama")
    one = activation_bytes(config, 1, 64, 2, False)
    assert activation_bytes(config, 4, 64, 2, False) == {k: 4 * v for k, v in one.items()}
    assert activation_bytes(config, 1, 64, 2, True)["layers"] < one["layers"]


def test_steps_and_time_from_the_data_size():
    cfg = cfg_of(method={"name": "lora"}, train={"batch_size": 4, "grad_accum": 2, "epochs": 2})
    est = estimate_run(cfg, 100, 10.0, "cpu")
    t = est["time"]
    assert t["train_samples"] == 85  # val_size 0.15 held out
    assert t["steps"] == 2 * math.ceil(85 / 8)
    assert t["tokens_per_step"] == 8 * 10.0
    p = est["params"]
    assert t["flops_per_token"] == 4 * p["total"] + 2 * p["trainable"]
    assert est["dtype"] == "float32"  # the suite pins CPU runs to float32 (conftest)
    assert t["seconds"] == pytest.approx(t["steps"] * 80 * t["flops_per_token"] / 0.08e12)
    full = estimate_run(cfg_of(method={"name": "full"}, train={"max_steps": 5}), None, None, "h100")["time"]
    assert full["steps"] == 5 and full["tokens_per_step"] == 8 * 16  # unknown length: max_length
    assert full["flops_per_token"] == 6 * estimate_run(cfg_of(method={"name": "full"}), 1, None, "cpu")["params"]["total"]
    unknown = estimate_run(cfg_of(), None, None, "cpu")["time"]
    assert unknown["steps"] is None and unknown["seconds"] is None


def test_bad_device_and_model_are_clear_errors(tmp_path):
    with pytest.raises(EstimateError, match="device: unknown device kind 'tpu'; choose from auto, cpu"):
        estimate_run(cfg_of(), 10, None, "tpu")
    with pytest.raises(EstimateError, match="model.name"):
        estimate_run(cfg_of(model={"name": str(tmp_path / "nowhere")}), 10, None, "cpu")
    assert estimate_run(cfg_of(), 10, None, "auto")["device"] == ("cuda" if torch.cuda.is_available() else "cpu")


def test_cli_prints_the_estimate_and_config_errors(tmp_path):
    import json

    import typer
    from typer.testing import CliRunner

    from tunelab.cli.estimate import estimate

    app = typer.Typer()
    app.command()(estimate)
    app.command("other")(lambda: None)  # two commands: `estimate` is addressed by name, as under `tunelab`
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"instruction": f"q{i}", "output": "a"}) + "\n" for i in range(20)))
    config = tmp_path / "run.yaml"
    config.write_text(f"model: {{name: tiny-llama}}\ndata: {{train: {train}, max_length: 32}}\n"
                      "method: {name: lora, r: 4}\ntrain: {batch_size: 2, epochs: 1}\n")
    r = CliRunner().invoke(app, ["estimate", str(config), "--device", "cpu", "--json"])
    assert r.exit_code == 0, r.output
    est = json.loads(r.output)
    assert est["time"]["train_samples"] == 17 and est["time"]["steps"] == 9  # 20 - 3 held out, batches of 2
    r = CliRunner().invoke(app, ["estimate", str(config), "train.bach_size=4"])
    assert r.exit_code == 2 and "train.bach_size: unknown key; did you mean train.batch_size?" in r.output


def test_cpu_time_uses_the_bf16_rate_only_where_bf16_runs_natively(monkeypatch):
    import tunelab.estimate as estimate

    cfg = cfg_of(method={"name": "lora"}, train={"max_steps": 10}, model={"name": "tiny-llama", "dtype": "bfloat16"})
    monkeypatch.setattr(estimate, "native_bf16_matmul", lambda: True)
    fast = estimate_run(cfg, None, 10.0, "cpu")["time"]
    assert fast["assumed_tflops"] == estimate.CPU_BF16_TFLOPS
    monkeypatch.setattr(estimate, "native_bf16_matmul", lambda: False)  # bf16 emulated: no faster than fp32
    slow = estimate_run(cfg, None, 10.0, "cpu")["time"]
    assert slow["assumed_tflops"] == estimate.DEVICE_TFLOPS["cpu"]
    assert slow["seconds"] == pytest.approx(fast["seconds"] * estimate.CPU_BF16_TFLOPS / estimate.DEVICE_TFLOPS["cpu"])
    gpu = estimate_run(cfg, None, 10.0, "h100")["time"]
    assert gpu["assumed_tflops"] == estimate.DEVICE_TFLOPS["h100"]


def _records(n: int) -> list[dict]:
    return [{"instruction": "word " * (1 + i % 7) + f"q{i}", "output": "answer " * (1 + i % 5)} for i in range(n)]


def _sft_config(tmp_path, records: list[dict] | None = None, name: str = "train.jsonl", **data):
    import json

    train = tmp_path / name
    train.write_text("".join(json.dumps(r) + "\n" for r in (records or _records(30))))
    return build_config({"model": {"name": "tiny-llama"}, "method": {"name": "lora", "r": 4},
                         "data": {"train": str(train), "max_length": 44, "val_size": 0.0, **data},
                         "train": {"batch_size": 4}})


def _trained_lengths(cfg) -> list[int]:
    from tunelab.data.pipeline import prepare_data
    from tunelab.data.templates import resolve_template
    from tunelab.models import load_tokenizer

    tok = load_tokenizer("tiny-llama")
    return [len(s.input_ids) for s in prepare_data(cfg.data, tok, resolve_template(tok, None), seed=0).train]


def test_measured_sample_length_is_what_training_tokenizes(tmp_path):
    from tunelab.estimate import measure_mean_tokens

    cfg = _sft_config(tmp_path, cache=False)
    lengths = _trained_lengths(cfg)
    assert len(lengths) == 30 and max(lengths) == 44 and min(lengths) < 44  # some samples are cut, some not
    mean, n = measure_mean_tokens(cfg)
    assert n == 30 and mean == pytest.approx(sum(lengths) / len(lengths))
    # a sample of 10 is every third record, not the first ten
    every_third = _trained_lengths(_sft_config(tmp_path, _records(30)[::3], "third.jsonl", cache=False))
    mean, n = measure_mean_tokens(cfg, sample=10)
    assert n == 10 and mean == pytest.approx(sum(every_third) / 10)


def test_measuring_falls_back_with_the_reason(tmp_path):
    from tunelab.estimate import measure_mean_tokens

    cfg = _sft_config(tmp_path)
    with pytest.raises(EstimateError, match="stage dpo: sample lengths are measured for sft data only"):
        measure_mean_tokens(build_config({**cfg.model_dump(mode="json", exclude_unset=True), "stage": "dpo"}))
    missing = build_config({**cfg.model_dump(mode="json", exclude_unset=True), "model": {"name": str(tmp_path / "no")}})
    with pytest.raises(EstimateError, match="no tokenizer on this machine"):
        measure_mean_tokens(missing)


def test_packed_runs_take_the_steps_their_rows_need():
    cfg = cfg_of(data={"packing": True, "max_length": 100}, train={"batch_size": 4, "epochs": 1})
    t = estimate_run(cfg, 1000, 30.0, "cpu")["time"]
    samples = 1000 - 150  # val_size 0.15 held out
    assert t["steps"] == math.ceil(math.ceil(samples * 30 / 100) / 4)  # 255 full rows of 100 tokens, 4 per step
    assert t["tokens_per_step"] == 4 * 100 and t["sample_tokens"] == 30.0 and t["packing"]
    unpacked = estimate_run(cfg_of(data={"max_length": 100}, train={"batch_size": 4, "epochs": 1}), 1000, 30.0, "cpu")["time"]
    assert unpacked["steps"] == math.ceil(samples / 4) and unpacked["tokens_per_step"] == 4 * 30
    # the same tokens either way, so the same FLOPs up to the last row's rounding
    assert t["flops"] == pytest.approx(unpacked["flops"], rel=0.02)


def test_cli_says_where_the_sample_length_came_from(tmp_path):
    import typer
    from typer.testing import CliRunner

    from tunelab.cli.estimate import estimate

    app = typer.Typer()
    app.command()(estimate)
    app.command("other")(lambda: None)
    config = tmp_path / "run.yaml"
    config.write_text(_sft_config(tmp_path).model_dump_json(exclude_unset=True))
    r = CliRunner().invoke(app, ["estimate", str(config), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "tokens (measured on 30 records)" in r.output
    r = CliRunner().invoke(app, ["estimate", str(config), "--device", "cpu", "--mean-tokens", "12"])
    assert "sample length: 12 tokens (given)" in r.output
    r = CliRunner().invoke(app, ["estimate", str(config), "--device", "cpu", "stage=dpo"])
    assert r.exit_code == 0, r.output
    assert "not measured: stage dpo" in r.output and "upper bound" in r.output


def test_a_vision_model_is_estimated_from_its_skeleton():
    from tunelab.methods import count_parameters as count

    from tunelab.models import load_model as load

    cfg = cfg_of(model={"name": "tiny-llava"}, method={"name": "lora", "r": 4})
    model, config = meta_model(cfg)
    assert config.model_type != "llava" and config.hidden_size > 0  # the decoder's config drives the formulas
    real = get_method("lora").apply(load("tiny-llava"), cfg.method)
    assert count_parameters(model) == count(real)
