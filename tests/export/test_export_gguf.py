"""GGUF export: reload the file with transformers' own GGUF loader and compare logits, tokenizer and template."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunelab.export import ExportError, export
from tunelab.export.gguf import GGUF_ARCHS, GgufArch, convert_tensors, permute_rope

# Max |logit difference| allowed after a GGUF round trip, per stored type. The tiny models'
# logits reach about 1.3 in magnitude; F32 must be exact up to float noise.
TOL = {"f32": 1e-5, "f16": 1e-2, "bf16": 2e-2, "q8_0": 5e-2}


def reload(path):
    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()


def max_diff(a, b, ids) -> float:
    with torch.no_grad():
        return (a(ids).logits - b(ids).logits).abs().max().item()


# Quantization is architecture-independent, so qwen2 (attention biases, no permutation) is checked exactly in F32.
@pytest.mark.parametrize("name,quant", [("llama", "f32"), ("llama", "f16"), ("llama", "bf16"), ("llama", "q8_0"),
                                        ("qwen2", "f32")])
def test_logits_match_source_after_transformers_reload(name, quant, request, tok, batch, tmp_path):
    model = request.getfixturevalue(name)
    path = export(model, tok, tok.chat_template, "gguf", tmp_path / "m.gguf", quant=quant)
    loaded = reload(path)
    assert type(loaded) is type(model)
    assert max_diff(model, loaded, batch) <= TOL[quant]


def test_without_qk_permutation_llama_logits_differ(llama, tok, batch, tmp_path, monkeypatch):
    """The permutation is what makes the llama round trip exact (test above): writing raw HF rows breaks it."""
    monkeypatch.setitem(GGUF_ARCHS, "llama", GgufArch(GGUF_ARCHS["llama"].arch, permute_qk=False))
    bad = export(llama, tok, None, "gguf", tmp_path / "bad.gguf", quant="f32")
    assert max_diff(llama, reload(bad), batch) > 1e-3


def test_permute_rope_interleaves_each_heads_halves():
    rows = np.arange(8, dtype=np.float32)[:, None]  # 2 heads of head_dim 4
    assert permute_rope(rows, 2)[:, 0].tolist() == [0, 2, 1, 3, 4, 6, 5, 7]
    assert permute_rope(np.arange(4, dtype=np.float32), 1).tolist() == [0, 2, 1, 3]  # biases too


def test_metadata_types_and_tied_output(llama, tok, tmp_path):
    path = export(llama, tok, tok.chat_template, "gguf", tmp_path, quant="q8_0")
    assert path == tmp_path / "model-q8_0.gguf"
    r = GGUFReader(str(path))
    f = {k: v.contents() for k, v in r.fields.items() if not k.startswith("tokenizer.ggml.merges")}
    assert f["general.architecture"] == "llama"
    assert f["llama.block_count"] == 2 and f["llama.embedding_length"] == 64
    assert f["llama.attention.head_count"] == 4 and f["llama.attention.head_count_kv"] == 2
    assert f["llama.rope.dimension_count"] == 16 and f["llama.vocab_size"] == 49152
    assert f["general.file_type"] == 7  # MOSTLY_Q8_0
    assert f["tokenizer.ggml.model"] == "gpt2" and f["tokenizer.ggml.pre"] == "gpt-2"
    assert f["tokenizer.ggml.bos_token_id"] == tok.bos_token_id == 1
    assert f["tokenizer.ggml.eos_token_id"] == tok.eos_token_id == 2
    assert f["tokenizer.ggml.padding_token_id"] == tok.pad_token_id
    assert f["tokenizer.chat_template"] == tok.chat_template
    assert f["tokenizer.ggml.tokens"][:3] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    types = f["tokenizer.ggml.token_type"]
    assert types[:17] == [3] * 17 and set(types[17:]) == {1}  # the 17 special tokens are CONTROL
    assert len(r.fields["tokenizer.ggml.merges"].data) == 48900
    kinds = {t.name: t.tensor_type for t in r.tensors}
    assert kinds["blk.0.attn_norm.weight"] == GGMLQuantizationType.F32
    assert kinds["blk.0.attn_q.weight"] == GGMLQuantizationType.Q8_0
    assert kinds["token_embd.weight"] == GGMLQuantizationType.Q8_0
    assert "output.weight" not in kinds  # tied lm_head: readers tie it back


def test_untied_model_writes_output_weight(tok, batch, tmp_path):
    from transformers import AutoModelForCausalLM as Auto

    from tunelab.models.tiny import tiny_config

    cfg = tiny_config("tiny-llama")
    cfg.tie_word_embeddings = False
    torch.manual_seed(0)
    model = Auto.from_config(cfg).eval()
    path = export(model, tok, None, "gguf", tmp_path / "u.gguf", quant="f32")
    assert "output.weight" in {t.name for t in GGUFReader(str(path)).tensors}
    loaded = reload(path)
    assert not loaded.config.tie_word_embeddings
    assert max_diff(model, loaded, batch) <= 1e-5


def test_tokenizer_round_trips_ids_and_chat_template(llama, tok, tmp_path):
    path = export(llama, tok, tok.chat_template, "gguf", tmp_path / "t.gguf", quant="f16")
    back = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    texts = ["Hello world! 12345", "Café, naïve, 日本語 and emoji 🙂", "  two  spaces\tand\ttabs\n\nnewlines",
             "<|im_start|>user\nhi<|im_end|>\n"]
    for text in texts:
        assert back(text)["input_ids"] == tok(text)["input_ids"], text
    assert back.chat_template == tok.chat_template
    msgs = [{"role": "user", "content": "What is 2+2?"}]
    assert (back.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
            == tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False))
    assert (back.bos_token, back.eos_token) == (tok.bos_token, tok.eos_token)


def test_unsupported_architecture_names_it_and_the_supported_ones(tok, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=49152))
    with pytest.raises(ExportError, match=r"architecture 'gpt2'.*supported architectures: llama, mistral, qwen2, "
                                          r"qwen3, gemma2, gemma3_text, phi3"):
        export(model, tok, None, "gguf", tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


def test_unknown_quant_lists_the_choices(llama, tok, tmp_path):
    with pytest.raises(ExportError, match=r"quant='q3_k'.*f32, f16, bf16, q8_0"):
        export(llama, tok, None, "gguf", tmp_path / "x.gguf", quant="q3_k")


def test_unknown_pre_tokenizer_asks_for_pre(llama, tok, tmp_path):
    from tunelab.export.gguf import pre_tokenizer_name

    with pytest.raises(ExportError, match="Pass pre=<name>"):
        pre_tokenizer_name({"type": "Metaspace"})
    path = export(llama, tok, None, "gguf", tmp_path / "p.gguf", quant="f32", pre="smollm")
    assert GGUFReader(str(path)).fields["tokenizer.ggml.pre"].contents() == "smollm"


def test_rows_that_do_not_fill_quant_blocks_fall_back_to_f16():
    """Q8_0 blocks hold 32 values; a 48-wide row cannot be split, so it is stored F16 (as llama.cpp does)."""
    from transformers import AutoModelForCausalLM as Auto

    from tunelab.models.tiny import tiny_config

    cfg = tiny_config("tiny-llama")
    cfg.intermediate_size = 48
    model = Auto.from_config(cfg)
    kinds = {n: t for n, _, t in convert_tensors(model, GGUF_ARCHS["llama"], GGMLQuantizationType.Q8_0)}
    assert kinds["blk.0.ffn_down.weight"] == GGMLQuantizationType.F16  # (64, 48): rows of 48
    assert kinds["blk.0.ffn_up.weight"] == GGMLQuantizationType.Q8_0  # (48, 64): rows of 64


@pytest.mark.slow
def test_real_smollm2_q8_0_keeps_next_token(tmp_path):
    from tunelab.models import load_model, load_tokenizer

    model, tok = load_model("smollm2-135m").eval(), load_tokenizer("smollm2-135m")
    path = export(model, tok, tok.chat_template, "gguf", tmp_path / "s.gguf", quant="q8_0")
    loaded = reload(path)
    ids = tok(["The capital of France is", "def fibonacci(n):"], return_tensors="pt", padding=True).input_ids
    with torch.no_grad():
        a, b = model(ids).logits, loaded(ids).logits
    assert torch.equal(a[:, -1].argmax(-1), b[:, -1].argmax(-1))
    assert (a - b).abs().max().item() < 0.05 * a.abs().max().item()  # Q8_0: within 5% of the logit range
