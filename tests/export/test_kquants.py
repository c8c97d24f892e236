"""K-quant writers: blocks decoded by gguf's own reader give the input back within each type's error,
and the per-tensor choices of the K mixes are llama-quantize's."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from tunelab.export.gguf import tensor_type
from tunelab.export.kquants import quantize_k


@pytest.fixture(scope="module")
def weights():
    """(64, 512) weights like a trained matrix: Gaussian, a few outliers, one all-zero super-block, one constant one."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((64, 512)) * 0.02).astype(np.float32)
    w[rng.integers(0, 64, 20), rng.integers(0, 512, 20)] *= 12  # outliers
    w[5, :256] = 0.0
    w[6, 256:] = 0.013
    return w


def rel_rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(((a - b) ** 2).mean() / (b ** 2).mean()))


# Largest relative RMS error allowed per type, on the weights above. Measured: Q2_K 0.29, Q3_K 0.15,
# Q4_K 0.07, Q5_K 0.036, Q6_K 0.018 (for Gaussian data, each extra bit halves the error).
REL_RMSE = {Q.Q2_K: 0.35, Q.Q3_K: 0.18, Q.Q4_K: 0.085, Q.Q5_K: 0.043, Q.Q6_K: 0.022}


@pytest.mark.parametrize("qtype", list(REL_RMSE), ids=lambda t: t.name)
def test_gguf_reader_decodes_blocks_back_to_the_weights(weights, qtype):
    blocks = quantize_k(weights, qtype)
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    assert blocks.dtype == np.uint8 and blocks.shape == (64, 512 // block_size * type_size)
    back = gguf.quants.dequantize(blocks, qtype)  # llama.cpp's reader, not ours
    assert back.shape == weights.shape
    assert rel_rmse(back, weights) < REL_RMSE[qtype]
    assert np.all(back[5, :256] == 0)  # an all-zero block stays exactly zero
    np.testing.assert_allclose(back[6, 256:], 0.013, rtol=0.05)  # a constant block stays close to its value


@pytest.mark.parametrize("k_type,plain", [(Q.Q4_K, Q.Q4_0), (Q.Q5_K, Q.Q5_0), (Q.Q6_K, Q.Q5_1)])
def test_k_types_beat_gguf_own_plain_types_of_as_many_or_more_bits(weights, k_type, plain):
    """Q4_K (4.5 bits/weight) is more accurate than Q4_0 (4.5), Q5_K than Q5_0, Q6_K than Q5_1, as in llama.cpp."""
    ours = rel_rmse(gguf.quants.dequantize(quantize_k(weights, k_type), k_type), weights)
    theirs = rel_rmse(gguf.quants.dequantize(gguf.quants.quantize(weights, plain), plain), weights)
    assert ours < theirs


def test_rows_not_a_multiple_of_256_are_refused():
    with pytest.raises(ValueError, match="multiple of 256"):
        quantize_k(np.zeros((2, 320), np.float32), Q.Q4_K)


def _types(quant: str, n_layers: int, tied: bool = False, n_gqa: int = 1) -> dict[str, object]:
    w = np.zeros((256, 256), np.float32)
    names = ["token_embd.weight", "output.weight"] + [f"blk.{i}.{t}.weight" for i in range(n_layers)
                                                      for t in ("attn_q", "attn_v", "attn_output", "ffn_down", "ffn_up")]
    return {n: tensor_type(n, w, quant, n_layers=n_layers, tied=tied, n_gqa=n_gqa) for n in names}


def layers_with(types: dict, tensor: str, qtype) -> list[int]:
    return sorted(int(n.split(".")[1]) for n, t in types.items() if n.endswith(f"{tensor}.weight") and t == qtype)


def test_q4_k_m_mix_matches_llama_quantize_on_a_32_layer_model():
    """llama-quantize's Q4_K_M on a 32-layer Llama: attn_v and ffn_down in Q6_K for the first and last 4
    layers and every third layer between (6, 9, ..., 27); output Q6_K; everything else Q4_K."""
    types = _types("q4_k_m", 32)
    more = [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
    assert layers_with(types, "attn_v", Q.Q6_K) == more
    assert layers_with(types, "ffn_down", Q.Q6_K) == more
    assert types["output.weight"] == Q.Q6_K and types["token_embd.weight"] == Q.Q4_K
    assert {types[f"blk.{i}.{t}.weight"] for i in range(32) for t in ("attn_q", "attn_output", "ffn_up")} == {Q.Q4_K}


def test_other_mixes_follow_llama_quantize():
    s = _types("q4_k_s", 32)
    assert layers_with(s, "attn_v", Q.Q5_K) == [0, 1, 2, 3] and layers_with(s, "ffn_down", Q.Q5_K) == [0, 1, 2, 3]
    m3 = _types("q3_k_m", 32)
    assert layers_with(m3, "attn_v", Q.Q5_K) == [0, 1] and layers_with(m3, "attn_v", Q.Q4_K) == list(range(2, 32))
    assert layers_with(m3, "ffn_down", Q.Q5_K) == [0, 1] and m3["blk.0.attn_output.weight"] == Q.Q4_K
    two = _types("q2_k", 4, n_gqa=4)
    assert two["blk.0.attn_v.weight"] == Q.Q4_K and two["blk.0.ffn_down.weight"] == Q.Q3_K
    assert two["blk.0.attn_output.weight"] == Q.Q3_K and two["blk.0.attn_q.weight"] == Q.Q2_K
    assert set(_types("q6_k", 4).values()) == {Q.Q6_K}
    tied = _types("q5_k_m", 4, tied=True)
    assert tied["token_embd.weight"] == Q.Q6_K  # a tied embedding is the output matrix too


def test_shape_fallbacks_are_llama_quantize_ones():
    assert tensor_type("blk.0.attn_q.weight", np.zeros((64, 64), np.float32), "q4_k_m") == Q.Q5_0
    assert tensor_type("blk.0.attn_q.weight", np.zeros((64, 64), np.float32), "q5_k_s") == Q.Q5_1
    assert tensor_type("blk.0.attn_q.weight", np.zeros((64, 64), np.float32), "q6_k") == Q.Q8_0
    assert tensor_type("blk.0.attn_q.weight", np.zeros((64, 64), np.float32), "q3_k_s") == Q.Q4_0
    assert tensor_type("blk.0.attn_q.weight", np.zeros((64, 48), np.float32), "q4_k_m") == Q.F16
    assert tensor_type("output.weight", np.zeros((64, 64), np.float32), "q4_k_m") == Q.Q8_0
    assert tensor_type("blk.0.attn_norm.weight", np.zeros(256, np.float32), "q4_k_m") == Q.F32
