"""safetensors export and the format registry: plain-transformers reload, shards, dtype, template; bad names and options."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunelab.export import EXPORTERS, ExportError, export


def test_reloads_with_plain_transformers_identically(qwen2, tok, batch, tmp_path):
    out = export(qwen2, tok, tok.chat_template, "safetensors", tmp_path / "m", max_shard_size="5MB")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1  # sharded
    for shard in shards:
        with safe_open(str(out / shard), "pt") as f:
            assert f.keys()
    loaded = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    with torch.no_grad():
        assert torch.equal(loaded(batch).logits, qwen2(batch).logits)
    back = AutoTokenizer.from_pretrained(str(out))
    assert back.chat_template == tok.chat_template
    assert (out / "chat_template.jinja").read_text() == tok.chat_template
    assert back("Hi there 42")["input_ids"] == tok("Hi there 42")["input_ids"]


def test_dtype_casts_a_copy_and_the_run_template_wins(llama, tok, tmp_path):
    trained = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    before = tok.chat_template
    out = export(llama, tok, trained, "merged", tmp_path / "b", dtype="bfloat16")
    assert AutoModelForCausalLM.from_pretrained(str(out)).dtype == torch.bfloat16
    assert next(llama.parameters()).dtype == torch.float32
    assert AutoTokenizer.from_pretrained(str(out)).chat_template == trained
    assert (out / "chat_template.jinja").read_text() == trained
    assert tok.chat_template == before  # the caller's tokenizer is left alone


def test_registry_names_and_errors(llama, tok, tmp_path):
    assert set(EXPORTERS) == {"safetensors", "merged", "gguf", "ollama", "onnx", "triton"}
    with pytest.raises(ExportError, match=r"unknown export format 'ggfu'; did you mean 'gguf'\?"):
        export(llama, tok, None, "ggfu", tmp_path / "x")
    with pytest.raises(ExportError, match=r"'gguf' does not take option\(s\) quantization; it takes: quant, name, pre"):
        export(llama, tok, None, "gguf", tmp_path / "x.gguf", quantization="q8_0")
    assert not (tmp_path / "x.gguf").exists()
