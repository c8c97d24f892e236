"""A run that cannot merge exports base + adapter side by side, and the pieces reload to the run's logits;
every export says honestly what it wrote (merged, full weights, or base + adapter NOT merged)."""

import pytest
import torch
from typer.testing import CliRunner

import tunelab
from tunelab.cli import app
from tunelab.data.io import write_records


@pytest.fixture(scope="module")
def prompt_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundle")
    data = root / "d.jsonl"
    write_records(data, [{"instruction": f"Add {i} and {i}", "output": str(2 * i)} for i in range(8)])
    return tunelab.train({"model": {"name": "tiny-llama"}, "data": {"train": str(data), "val_size": 0},
                          "method": {"name": "prompt", "num_virtual_tokens": 4},
                          "train": {"max_steps": 2, "batch_size": 4, "lr": 1e-2, "report": False},
                          "output_dir": str(root / "run")}, progress=False)


def test_unmergeable_run_exports_a_bundle_that_reloads(prompt_run, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    res = CliRunner().invoke(app, ["export", str(prompt_run.path), "--format", "merged", "--out", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    assert "as base model + prompt adapter side by side, NOT merged" in res.output
    assert "as safetensors" not in res.output and "merged into" not in res.output
    readme = (tmp_path / "b" / "README.md").read_text()
    assert "cannot be" in readme and "PeftModel.from_pretrained" in readme
    assert (tmp_path / "b" / "base" / "chat_template.jinja").read_text() == prompt_run.chat_template
    rebuilt = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "b" / "base"),
                                        str(tmp_path / "b" / "adapter"))
    model, tok, _ = prompt_run.load_model(device="cpu")
    ids = torch.tensor([tok("Add 3 and 3")["input_ids"]])
    with torch.no_grad():
        plain_peft = rebuilt(input_ids=ids).logits  # (1, 4 virtual + T, V): PEFT keeps the prompt positions
        ours = model(input_ids=ids).logits  # (1, T, V): the run drops them
    torch.testing.assert_close(plain_peft[:, 4:], ours, rtol=1e-5, atol=1e-5)


def test_unmergeable_run_to_gguf_says_what_to_do(prompt_run, tmp_path):
    res = CliRunner().invoke(app, ["export", str(prompt_run.path), "--format", "gguf", "--out", str(tmp_path / "g")])
    assert res.exit_code == 2
    assert "--format merged" in res.output and not (tmp_path / "g").exists()


def test_unmergeable_default_folder_is_named_bundle_not_merged(prompt_run):
    done = prompt_run.export_described("merged")
    assert done.path == prompt_run.path / "export" / "bundle" and not done.merged
    assert (done.path / "base").is_dir() and (done.path / "adapter").is_dir()
    assert not (prompt_run.path / "export" / "merged").exists()


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    data = root / "d.jsonl"
    write_records(data, [{"instruction": f"Add {i} and {i}", "output": str(2 * i)} for i in range(8)])
    return tunelab.train({"model": {"name": "tiny-llama"}, "data": {"train": str(data), "val_size": 0},
                          "method": {"name": "lora", "r": 4},
                          "train": {"max_steps": 1, "batch_size": 4, "lr": 1e-2, "report": False},
                          "output_dir": str(root / "run")}, progress=False)


@pytest.mark.parametrize("fmt,options,label", [
    ("merged", [], "safetensors model (lora adapter merged into the base)"),
    ("gguf", ["--quant", "q4_k_m"], "GGUF q4_k_m (lora adapter merged into the base)"),
])
def test_mergeable_run_label_names_format_and_merge(lora_run, tmp_path, fmt, options, label):
    res = CliRunner().invoke(app, ["export", str(lora_run.path), "--format", fmt, "--out", str(tmp_path / "x"),
                                   *options])
    assert res.exit_code == 0, res.output
    assert f"as {label}" in " ".join(res.output.split())


def test_format_labels_for_every_format():
    from tunelab.export import EXPORTERS
    from tunelab.run import format_label

    labels = {fmt: format_label(fmt, {}) for fmt in EXPORTERS}
    assert labels == {"safetensors": "safetensors model", "merged": "safetensors model", "gguf": "GGUF f16",
                      "ollama": "Ollama model (GGUF q8_0 + Modelfile)", "onnx": "ONNX graph with KV cache",
                      "triton": "Triton repository (ONNX graph without KV cache)"}
    assert format_label("onnx", {"with_past": False}) == "ONNX graph without KV cache"
    assert format_label("gguf", {"quant": "Q5_K_M"}) == "GGUF q5_k_m"
