"""GGUF export of every supported family (llama, mistral, qwen2, qwen3, gemma2, gemma3, phi3) and every quant
type: the file read back by gguf's reader and by transformers' GGUF loader gives the source model's logits
within the tolerance of its quant type."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tests.export.conftest import FAMILIES, family_model
from gguf import GGMLQuantizationType as Q
from gguf import GGUFReader
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunelab.export import GGUF_QUANTS, ExportError, export

# Tolerance per quant type on the logits of these 2-layer, hidden-256 random models (logits up to about 1.7):
# (max |difference|, relative RMS difference ||a - b|| / ||a||), about twice what was measured. F32 must be
# exact. Measured on llama: F16 7e-4 / 5e-4, BF16 6e-3 / 4e-3, Q8_0 0.017 / 0.013, Q6_K 0.058 / 0.042,
# Q5_K_M 0.10 / 0.068, Q5_0 0.15 / 0.11, Q4_K_M 0.19 / 0.12 (0.19-0.30 / 0.12-0.21 over the seven families),
# Q4_0 0.28 / 0.21, Q3_K_M 0.19 / 0.14, Q3_K_S 0.46 / 0.30, Q2_K 0.46 / 0.33. A K mix gives the 2 layers of
# these models more bits than most layers of a real one get, so Q3_K_M lands near Q4_K here.
# docs/export.md repeats these numbers.
TOL = {
    "f32": (1e-5, 1e-5), "f16": (5e-3, 5e-3), "bf16": (2e-2, 1e-2), "q8_0": (0.05, 0.03),
    "q6_k": (0.12, 0.08), "q5_k_m": (0.2, 0.14), "q5_k_s": (0.2, 0.14), "q5_1": (0.25, 0.2), "q5_0": (0.3, 0.2),
    "q4_k_m": (0.5, 0.35), "q4_k_s": (0.5, 0.35), "q4_1": (0.55, 0.4), "q4_0": (0.55, 0.4),
    "q3_k_l": (0.5, 0.35), "q3_k_m": (0.5, 0.35), "q3_k_s": (0.8, 0.55), "q2_k": (0.9, 0.6),
}

TRANSFORMERS_CLASS = {"llama": "LlamaForCausalLM", "mistral": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                      "qwen3": "Qwen3ForCausalLM", "gemma2": "Gemma2ForCausalLM", "gemma3": "Gemma3ForCausalLM",
                      "phi3": "Phi3ForCausalLM"}


@pytest.fixture(scope="module")
def models():
    return {f: family_model(f) for f in FAMILIES}


@pytest.fixture(scope="module")
def ids():
    return torch.randint(17, 2048, (2, 12), generator=torch.Generator().manual_seed(0))


def reload(path):
    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()


def differences(a, b, ids) -> tuple[float, float]:
    with torch.no_grad():
        la, lb = a(ids).logits, b(ids).logits
    return (la - lb).abs().max().item(), ((la - lb).norm() / la.norm()).item()


def check(model, path, ids, quant):
    loaded = reload(path)
    max_abs, rel = differences(model, loaded, ids)
    tol_abs, tol_rel = TOL[quant]
    assert max_abs <= tol_abs and rel <= tol_rel, (quant, max_abs, rel)
    return loaded


@pytest.mark.parametrize("family", FAMILIES)
def test_family_round_trips_exactly_in_f32_with_tokenizer_and_template(family, models, small_tok, ids, tmp_path):
    model = models[family]
    path = export(model, small_tok, small_tok.chat_template, "gguf", tmp_path / f"{family}.gguf", quant="f32")
    loaded = check(model, path, ids, "f32")
    assert type(loaded).__name__ == TRANSFORMERS_CLASS[family]
    fields = GGUFReader(str(path)).fields
    assert fields["tokenizer.chat_template"].contents() == small_tok.chat_template
    assert len(fields["tokenizer.ggml.tokens"].contents()) == 2048


@pytest.mark.parametrize("family", FAMILIES)
def test_family_q4_k_m_stores_k_blocks_and_stays_within_tolerance(family, models, small_tok, ids, tmp_path):
    model = models[family]
    path = export(model, small_tok, small_tok.chat_template, "gguf", tmp_path, quant="q4_k_m")
    assert path.name == "model-q4_k_m.gguf"
    r = GGUFReader(str(path))
    kinds = {t.name: t.tensor_type for t in r.tensors}
    assert {Q.Q4_K, Q.Q6_K} <= set(kinds.values())  # real K-quant blocks, not shape fallbacks
    assert kinds["blk.1.ffn_down.weight"] == Q.Q6_K  # last layer: llama-quantize gives it more bits
    assert r.fields["general.file_type"].contents() == 15  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    check(model, path, ids, "q4_k_m")


@pytest.mark.parametrize("quant", [q for q in GGUF_QUANTS if q not in ("f32", "q4_k_m")])
def test_every_quant_type_reloads_within_its_tolerance(quant, models, small_tok, ids, tmp_path):
    path = export(models["llama"], small_tok, None, "gguf", tmp_path / "m.gguf", quant=quant)
    check(models["llama"], path, ids, quant)


def test_family_metadata_is_what_llama_cpp_reads(models, small_tok, tmp_path):
    def fields(family):
        path = export(models[family], small_tok, None, "gguf", tmp_path / f"{family}.gguf", quant="f32")
        r = GGUFReader(str(path))
        return {k: v.contents() for k, v in r.fields.items() if not k.startswith("tokenizer.")}, r

    g2, r = fields("gemma2")
    assert g2["general.architecture"] == "gemma2"
    assert g2["gemma2.attn_logit_softcapping"] == 50.0 and g2["gemma2.final_logit_softcapping"] == 30.0
    assert g2["gemma2.attention.sliding_window"] == 4096 and g2["gemma2.attention.key_length"] == 256
    norm = next(t for t in r.tensors if t.name == "blk.0.attn_norm.weight")
    want = models["gemma2"].model.layers[0].input_layernorm.weight.detach().numpy() + 1  # Gemma's (1 + w)
    np.testing.assert_allclose(np.asarray(norm.data), want, rtol=0, atol=0)
    g3, _ = fields("gemma3")
    assert g3["general.architecture"] == "gemma3" and g3["gemma3.rope.freq_base"] == 1e6
    assert g3["gemma3.rope.freq_base_swa"] == 1e4
    q3, _ = fields("qwen3")
    assert q3["qwen3.attention.key_length"] == 128 and q3["qwen3.embedding_length"] == 256
    m, _ = fields("mistral")
    assert m["general.architecture"] == "llama"  # llama.cpp runs Mistral as llama (Q/K permuted alike)
    _, r = fields("phi3")
    assert {"blk.0.attn_qkv.weight", "blk.0.ffn_up.weight"} <= {t.name for t in r.tensors}


def test_family_tokenizer_reloads_from_gguf(models, small_tok, tmp_path):
    path = export(models["qwen3"], small_tok, small_tok.chat_template, "gguf", tmp_path / "q.gguf", quant="q8_0")
    back = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    for text in ["Hello world! 12345", "  two  spaces\tand\ttabs\n", "<|im_start|>user\nhi<|im_end|>\n"]:
        assert back(text)["input_ids"] == small_tok(text)["input_ids"], text
    assert back.chat_template == small_tok.chat_template


def test_settings_llama_cpp_would_not_reproduce_are_refused(small_tok, tmp_path):
    from transformers import AutoModelForCausalLM as Auto

    from tests.export.conftest import family_config

    cfg = family_config("gemma2")
    cfg.query_pre_attn_scalar = 144  # llama.cpp uses head_dim (256) for a 2-layer Gemma 2
    with pytest.raises(ExportError, match="query_pre_attn_scalar=144.*uses 256"):
        export(Auto.from_config(cfg), small_tok, None, "gguf", tmp_path / "g.gguf")
    cfg = family_config("gemma3")
    cfg.layer_types = ["full_attention", "sliding_attention"]
    with pytest.raises(ExportError, match="layer_types.*gemma3 pattern"):
        export(Auto.from_config(cfg), small_tok, None, "gguf", tmp_path / "g3.gguf")
    cfg = family_config("phi3")
    cfg.rope_parameters = {"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1.0] * 32,
                           "long_factor": [1.0] * 32, "original_max_position_embeddings": 1024}
    with pytest.raises(ExportError, match="RoPE scaling type 'longrope'"):
        export(Auto.from_config(cfg), small_tok, None, "gguf", tmp_path / "p.gguf")
    assert not list(tmp_path.iterdir())
