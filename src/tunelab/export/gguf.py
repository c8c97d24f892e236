"""`gguf`: one GGUF file (llama.cpp, Ollama, LM Studio) with weights, hyperparameters, tokenizer and chat template.

Built on the `gguf` package from llama.cpp: its GGUFWriter, its tensor-name map
(`gguf.get_tensor_name_map`) and its numpy quantizers (`gguf.quants.quantize`), so names and
block layouts are exactly what llama.cpp reads. The K-quants, which `gguf` can read but not
write, come from `tunelab.export.kquants`. What this module adds is the part of llama.cpp's
`convert_hf_to_gguf.py` and `llama-quantize` a fine-tuned model needs:

- one `GgufArch` per transformers architecture (llama, mistral, qwen2, qwen3, gemma2, gemma3,
  phi3): the llama.cpp architecture, its extra hyperparameters, and how tensors change;
- llama-architecture Q/K rows are permuted: Hugging Face stores each head's rotary pairs as
  (first half, second half), llama.cpp's RoPE wants them interleaved (transformers' GGUF loader
  undoes exactly this in `LlamaTensorProcessor._reverse_permute_weights`);
- Gemma's RMSNorm multiplies by (1 + w); llama.cpp's by w, so Gemma norms are stored as 1 + w;
- the quant "mixes" of llama-quantize (q4_k_m keeps attn_v / ffn_down of some layers and the
  output matrix in Q6_K, ...), chosen per tensor by `tensor_type`;
- 1-D tensors (norms, biases) stay F32 and rows that a block quantizer cannot split fall back
  (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, Q2_K/Q3_K -> Q4_0, then F16), as llama.cpp does;
- a tied `lm_head` is left out (no `output.weight`), which readers take to mean "tied".

The tokenizer (byte-level BPE or SentencePiece style) is written by `tunelab.export.gguf_vocab`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from tunelab.export.base import ExportError, atomic_file, require_arch
from tunelab.export.gguf_vocab import (
    GgufVocab,
    add_vocab,
    pre_tokenizer_name,
    tokenizer_vocab,
)
from tunelab.export.kquants import K_QUANTIZERS, quantize_k

__all__ = ["GGUF_ARCHS", "GGUF_QUANTS", "GgufArch", "GgufVocab", "QuantMix", "add_vocab", "convert_tensors",
           "export_gguf", "pre_tokenizer_name", "quant_mix", "tensor_type", "tokenizer_vocab"]

Q = gguf.GGMLQuantizationType
FT = gguf.LlamaFileType


def _rope_sections(cfg: Any) -> tuple[dict, dict | None]:
    """(global RoPE parameters, sliding-layer RoPE parameters or None) from a transformers config.

    transformers 5 keeps them in `rope_parameters`, per layer type for models with local and
    global attention (Gemma 3); older configs use `rope_theta` + `rope_scaling`.
    """
    rope = dict(getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {})
    if "full_attention" in rope:
        return dict(rope["full_attention"]), dict(rope.get("sliding_attention") or {}) or None
    return rope, None


def _check_layer_types(cfg: Any, sliding: Callable[[int], bool], family: str) -> None:
    """Refuse a sliding/full attention layout llama.cpp would not reproduce (it fixes the pattern per family)."""
    types = getattr(cfg, "layer_types", None)
    if types is None:
        return
    want = ["sliding_attention" if sliding(i) else "full_attention" for i in range(len(types))]
    if list(types) != want:
        raise ExportError(f"layer_types {list(types)} differ from the {family} pattern llama.cpp assumes ({want}); "
                          "export --format safetensors instead")


def _check_query_scale(cfg: Any, family: str, big_layers: int) -> None:
    """llama.cpp scales Gemma queries by 1/sqrt(head_dim), or by 1/sqrt(hidden/heads) for the 27B model (by layer count)."""
    head_dim = cfg.head_dim
    want = cfg.hidden_size // cfg.num_attention_heads if cfg.num_hidden_layers == big_layers else head_dim
    if getattr(cfg, "query_pre_attn_scalar", want) != want:
        raise ExportError(f"query_pre_attn_scalar={cfg.query_pre_attn_scalar} but llama.cpp's {family} uses {want} "
                          "for this model size; export --format safetensors instead")


def _gemma2_hparams(writer: gguf.GGUFWriter, cfg: Any) -> None:
    _check_query_scale(cfg, "gemma2", big_layers=46)
    _check_layer_types(cfg, lambda i: i % 2 == 0, "gemma2")
    if cfg.attn_logit_softcapping is not None:
        writer.add_attn_logit_softcapping(float(cfg.attn_logit_softcapping))
    if cfg.final_logit_softcapping is not None:
        writer.add_final_logit_softcapping(float(cfg.final_logit_softcapping))
    writer.add_sliding_window(int(cfg.sliding_window))


def _gemma3_hparams(writer: gguf.GGUFWriter, cfg: Any) -> None:
    _check_query_scale(cfg, "gemma3", big_layers=62)
    _check_layer_types(cfg, lambda i: (i + 1) % 6 != 0, "gemma3")
    for key in ("attn_logit_softcapping", "final_logit_softcapping"):
        if getattr(cfg, key, None) is not None:
            raise ExportError(f"{key}={getattr(cfg, key)}: llama.cpp's gemma3 has no soft-capping; "
                              "export --format safetensors instead")
    writer.add_sliding_window(int(cfg.sliding_window))
    _, local = _rope_sections(cfg)
    if local is not None:
        writer.add_rope_freq_base_swa(float(local.get("rope_theta", 10000.0)))


def _phi3_hparams(writer: gguf.GGUFWriter, cfg: Any) -> None:
    if getattr(cfg, "sliding_window", None):
        writer.add_sliding_window(int(cfg.sliding_window))


@dataclass(frozen=True)
class GgufArch:
    """How a transformers architecture maps to GGUF.

    arch: the llama.cpp architecture; permute_qk: reorder Q/K rows for llama.cpp's RoPE;
    norm_shift: added to every `*norm.weight` (Gemma computes x * (1 + w)); extra: writes the
    family's own hyperparameters (soft-capping, sliding window...) and refuses settings llama.cpp
    would not reproduce.
    """

    arch: gguf.MODEL_ARCH
    permute_qk: bool = False
    norm_shift: float = 0.0
    extra: Callable[[gguf.GGUFWriter, Any], None] | None = None


GGUF_ARCHS: dict[str, GgufArch] = {
    "llama": GgufArch(gguf.MODEL_ARCH.LLAMA, permute_qk=True),
    "mistral": GgufArch(gguf.MODEL_ARCH.LLAMA, permute_qk=True),  # llama.cpp runs Mistral as llama
    "qwen2": GgufArch(gguf.MODEL_ARCH.QWEN2),
    "qwen3": GgufArch(gguf.MODEL_ARCH.QWEN3),
    "gemma2": GgufArch(gguf.MODEL_ARCH.GEMMA2, norm_shift=1.0, extra=_gemma2_hparams),
    "gemma3_text": GgufArch(gguf.MODEL_ARCH.GEMMA3, norm_shift=1.0, extra=_gemma3_hparams),
    "phi3": GgufArch(gguf.MODEL_ARCH.PHI3, extra=_phi3_hparams),
}


@dataclass(frozen=True)
class QuantMix:
    """A GGUF quant choice: the base type of 2-D weights, the file type recorded, and llama-quantize's mix name (or None)."""

    base: gguf.GGMLQuantizationType
    file_type: gguf.LlamaFileType
    mix: str | None = None


# quant name -> how weights are stored. Plain types put every 2-D weight in one type; the K mixes
# follow llama-quantize's per-tensor choices (see `tensor_type`).
GGUF_QUANTS: dict[str, QuantMix] = {
    "f32": QuantMix(Q.F32, FT.ALL_F32),
    "f16": QuantMix(Q.F16, FT.MOSTLY_F16),
    "bf16": QuantMix(Q.BF16, FT.MOSTLY_BF16),
    "q8_0": QuantMix(Q.Q8_0, FT.MOSTLY_Q8_0),
    "q6_k": QuantMix(Q.Q6_K, FT.MOSTLY_Q6_K, "q6_k"),
    "q5_k_m": QuantMix(Q.Q5_K, FT.MOSTLY_Q5_K_M, "q5_k_m"),
    "q5_k_s": QuantMix(Q.Q5_K, FT.MOSTLY_Q5_K_S, "q5_k_s"),
    "q5_1": QuantMix(Q.Q5_1, FT.MOSTLY_Q5_1),
    "q5_0": QuantMix(Q.Q5_0, FT.MOSTLY_Q5_0),
    "q4_k_m": QuantMix(Q.Q4_K, FT.MOSTLY_Q4_K_M, "q4_k_m"),
    "q4_k_s": QuantMix(Q.Q4_K, FT.MOSTLY_Q4_K_S, "q4_k_s"),
    "q4_1": QuantMix(Q.Q4_1, FT.MOSTLY_Q4_1),
    "q4_0": QuantMix(Q.Q4_0, FT.MOSTLY_Q4_0),
    "q3_k_l": QuantMix(Q.Q3_K, FT.MOSTLY_Q3_K_L, "q3_k_l"),
    "q3_k_m": QuantMix(Q.Q3_K, FT.MOSTLY_Q3_K_M, "q3_k_m"),
    "q3_k_s": QuantMix(Q.Q3_K, FT.MOSTLY_Q3_K_S, "q3_k_s"),
    "q2_k": QuantMix(Q.Q2_K, FT.MOSTLY_Q2_K, "q2_k"),
}

def export_gguf(model: Any, tokenizer: Any, chat_template: str | None, out_path: str | Path, *,
                quant: str = "f16", name: str | None = None, pre: str | None = None) -> Path:
    """Write `model` + `tokenizer` + `chat_template` as one GGUF file and return its path.

    `out_path` is the .gguf file, or a folder to hold `model-<quant>.gguf`. `quant` is one of
    GGUF_QUANTS: plain types (f32, f16, bf16, q8_0, q5_1, q5_0, q4_1, q4_0) or llama-quantize's
    K mixes (q6_k, q5_k_m, q5_k_s, q4_k_m, q4_k_s, q3_k_l, q3_k_m, q3_k_s, q2_k). `pre`
    overrides the detected llama.cpp pre-tokenizer name (tokenizer.ggml.pre).
    """
    spec = GGUF_ARCHS[require_arch(model, tuple(GGUF_ARCHS), "gguf")]
    mix = quant_mix(quant)
    out_path = Path(out_path)
    if out_path.suffix != ".gguf":
        out_path = out_path / f"model-{quant.lower()}.gguf"
    cfg = model.config
    vocab = tokenizer_vocab(tokenizer, cfg.vocab_size, pre=pre)
    with atomic_file(out_path) as tmp:
        writer = gguf.GGUFWriter(str(tmp), gguf.MODEL_ARCH_NAMES[spec.arch])
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(name or Path(str(getattr(cfg, "_name_or_path", "") or "model")).name)
        add_hparams(writer, cfg, mix.file_type)
        if spec.extra is not None:
            spec.extra(writer, cfg)
        add_vocab(writer, vocab, chat_template)
        for gguf_name, data, ttype in convert_tensors(model, spec, mix):
            writer.add_tensor(gguf_name, data, raw_dtype=ttype)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return out_path


def quant_mix(quant: str | QuantMix | gguf.GGMLQuantizationType) -> QuantMix:
    """The QuantMix for a quant name (case-insensitive), or ExportError listing the names."""
    if isinstance(quant, QuantMix):
        return quant
    if isinstance(quant, gguf.GGMLQuantizationType):  # one type for every 2-D weight, no mix
        return QuantMix(quant, FT.GUESSED)
    if str(quant).lower() not in GGUF_QUANTS:
        raise ExportError(f"quant={quant!r} is not a GGUF type this exporter writes; choose from {', '.join(GGUF_QUANTS)}")
    return GGUF_QUANTS[str(quant).lower()]


def add_hparams(writer: gguf.GGUFWriter, cfg: Any, ftype: gguf.LlamaFileType) -> None:
    """Write the architecture hyperparameters llama.cpp needs (sizes, heads, RoPE, norm epsilon, file type)."""
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    rope, _ = _rope_sections(cfg)
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    rotary = rope.get("partial_rotary_factor", getattr(cfg, "partial_rotary_factor", None)) or 1.0
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))))
    writer.add_rope_dimension_count(int(head_dim * rotary))
    if head_dim != cfg.hidden_size // cfg.num_attention_heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if rope_type == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    elif rope_type != "default":
        raise ExportError(f"RoPE scaling type {rope_type!r} is not supported by the GGUF exporter "
                          "(supported: default, linear); export --format safetensors and use llama.cpp's "
                          "convert_hf_to_gguf.py for this model")
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_file_type(ftype)


def permute_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder each head's rows from HF's rotate-half layout to llama.cpp's interleaved pairs.

    w: (n_head * head_dim, ...) -> same shape. Within a head, rows [0..d/2) and [d/2..d) become
    interleaved (0, d/2, 1, d/2+1, ...), as convert_hf_to_gguf.py's LlamaModel.permute does.
    """
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# When a row does not split into the chosen type's blocks: llama-quantize's replacement of the same size class.
_FALLBACK = {Q.Q2_K: Q.Q4_0, Q.Q3_K: Q.Q4_0, Q.Q4_K: Q.Q5_0, Q.Q5_K: Q.Q5_1, Q.Q6_K: Q.Q8_0}


def _use_more_bits(i: int, n: int) -> bool:
    """llama-quantize's choice of layers that get more bits: the first and last eighth, and every third between."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _mix_type(name: str, ncols: int, mix: QuantMix, n_layers: int, tied: bool, n_gqa: int) -> gguf.GGMLQuantizationType:
    """The type llama-quantize gives tensor `name` under a K mix (before the shape fallback)."""
    base, kind = mix.base, mix.mix
    if name == "output.weight" or (tied and name == "token_embd.weight"):
        return Q.Q8_0 if ncols % gguf.GGML_QUANT_SIZES[base][0] else Q.Q6_K
    if kind == "q6_k" or not name.startswith("blk."):
        return base
    layer = int(name.split(".")[1])
    if name.endswith(("attn_v.weight", "attn_qkv.weight")):
        if kind == "q2_k":
            return Q.Q4_K if n_gqa >= 4 else Q.Q3_K
        if kind == "q3_k_m":
            return Q.Q5_K if layer < 2 else Q.Q4_K
        if kind == "q3_k_l":
            return Q.Q5_K
        if kind in ("q4_k_m", "q5_k_m") and _use_more_bits(layer, n_layers):
            return Q.Q6_K
        if kind == "q4_k_s" and layer < 4:
            return Q.Q5_K
    elif name.endswith("ffn_down.weight"):
        if kind == "q2_k":
            return Q.Q3_K
        if kind == "q3_k_m":
            return Q.Q5_K if layer < n_layers // 16 else Q.Q4_K
        if kind == "q3_k_l":
            return Q.Q5_K
        if kind in ("q4_k_m", "q5_k_m") and _use_more_bits(layer, n_layers):
            return Q.Q6_K
        if kind == "q4_k_s" and layer < n_layers // 8:
            return Q.Q5_K
    elif name.endswith("attn_output.weight"):
        return {"q2_k": Q.Q3_K, "q3_k_m": Q.Q4_K, "q3_k_l": Q.Q5_K}.get(kind, base)
    return base


def tensor_type(name: str, data: np.ndarray, quant: str | QuantMix | gguf.GGMLQuantizationType, *,
                n_layers: int = 1, tied: bool = False, n_gqa: int = 1) -> gguf.GGMLQuantizationType:
    """The type tensor `name` (a GGUF name) is stored in under `quant`.

    1-D tensors stay F32. A K mix picks per tensor as llama-quantize does (`_mix_type`); then a
    row that does not split into the type's blocks falls back to the same-size type with
    32-value blocks, or F16 when even those do not fit.
    """
    if data.ndim <= 1:
        return Q.F32
    mix = quant_mix(quant)
    ncols = data.shape[-1]
    ttype = _mix_type(name, ncols, mix, n_layers, tied, n_gqa) if mix.mix else mix.base
    block, _ = gguf.GGML_QUANT_SIZES[ttype]
    if ncols % block:
        ttype = _FALLBACK.get(ttype, Q.F16)
        if ncols % gguf.GGML_QUANT_SIZES[ttype][0]:
            ttype = Q.F16
    return ttype


def quantize(data: np.ndarray, ttype: gguf.GGMLQuantizationType) -> np.ndarray:
    """Encode a float32 array as `ttype` (K-quants here, the rest by gguf.quants)."""
    if ttype in K_QUANTIZERS:
        return quantize_k(data, ttype)
    return gguf.quants.quantize(data, ttype)


def convert_tensors(model: Any, spec: GgufArch, quant: str | QuantMix | gguf.GGMLQuantizationType):
    """Yield (gguf name, stored array, tensor type) for every weight of `model`, converted and quantized."""
    cfg = model.config
    mix = quant_mix(quant)
    n_head = cfg.num_attention_heads
    n_kv = getattr(cfg, "num_key_value_heads", None) or n_head
    names = gguf.get_tensor_name_map(spec.arch, cfg.num_hidden_layers)
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ExportError(f"tensor {hf_name!r} has no GGUF name for architecture "
                              f"{gguf.MODEL_ARCH_NAMES[spec.arch]!r}; the model has parts llama.cpp does not know")
        data = tensor.detach().to("cpu").float().numpy()  # bf16 has no numpy dtype; quantize from f32
        if spec.permute_qk and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            data = permute_rope(data, n_head)
        elif spec.permute_qk and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            data = permute_rope(data, n_kv)
        elif spec.norm_shift and hf_name.endswith("norm.weight"):
            data = data + spec.norm_shift
        ttype = tensor_type(gguf_name, data, mix, n_layers=cfg.num_hidden_layers, tied=tied, n_gqa=n_head // n_kv)
        yield gguf_name, quantize(data, ttype), ttype
