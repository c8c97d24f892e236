"""`gguf`: one GGUF file (llama.cpp, Ollama, LM Studio) with weights, hyperparameters, tokenizer and chat template.

Built on the `gguf` package from llama.cpp: its GGUFWriter, its tensor-name map
(`gguf.get_tensor_name_map`) and its numpy quantizers (`gguf.quants.quantize`), so names and
block layouts are exactly what llama.cpp reads. What this module adds is the part of
llama.cpp's `convert_hf_to_gguf.py` a fine-tuned Llama/Qwen2 needs:

- llama-architecture Q/K rows are permuted: Hugging Face stores each head's rotary pairs as
  (first half, second half), llama.cpp's RoPE wants them interleaved (transformers' GGUF loader
  undoes exactly this in `LlamaTensorProcessor._reverse_permute_weights`);
- 1-D tensors (norms, biases) stay F32 and rows that a block quantizer cannot split fall back
  to F16, as llama.cpp does;
- a tied `lm_head` is left out (no `output.weight`), which readers take to mean "tied".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from tunelab.export.base import ExportError, atomic_file, require_arch


@dataclass(frozen=True)
class GgufArch:
    """How a transformers architecture maps to GGUF: the llama.cpp architecture and whether Q/K need permuting."""

    arch: gguf.MODEL_ARCH
    permute_qk: bool


GGUF_ARCHS: dict[str, GgufArch] = {
    "llama": GgufArch(gguf.MODEL_ARCH.LLAMA, permute_qk=True),
    "qwen2": GgufArch(gguf.MODEL_ARCH.QWEN2, permute_qk=False),
}

Q = gguf.GGMLQuantizationType
FT = gguf.LlamaFileType
# quant name -> (tensor type of the 2-D weights, general.file_type); all have numpy quantizers in gguf.quants.
GGUF_QUANTS: dict[str, tuple[gguf.GGMLQuantizationType, gguf.LlamaFileType]] = {
    "f32": (Q.F32, FT.ALL_F32),
    "f16": (Q.F16, FT.MOSTLY_F16),
    "bf16": (Q.BF16, FT.MOSTLY_BF16),
    "q8_0": (Q.Q8_0, FT.MOSTLY_Q8_0),
    "q5_1": (Q.Q5_1, FT.MOSTLY_Q5_1),
    "q5_0": (Q.Q5_0, FT.MOSTLY_Q5_0),
    "q4_1": (Q.Q4_1, FT.MOSTLY_Q4_1),
    "q4_0": (Q.Q4_0, FT.MOSTLY_Q4_0),
}

# The Split regex of a tokenizer.json pre-tokenizer -> llama.cpp's `tokenizer.ggml.pre` name.
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
SPLIT_PRE_NAMES: dict[str, str] = {_LLAMA3_SPLIT: "llama-bpe", _QWEN2_SPLIT: "qwen2"}


def export_gguf(model: Any, tokenizer: Any, chat_template: str | None, out_path: str | Path, *,
                quant: str = "f16", name: str | None = None, pre: str | None = None) -> Path:
    """Write `model` + `tokenizer` + `chat_template` as one GGUF file and return its path.

    `out_path` is the .gguf file, or a folder to hold `model-<quant>.gguf`. `quant` is one of
    GGUF_QUANTS (f32, f16, bf16, q8_0, q5_1, q5_0, q4_1, q4_0). `pre` overrides the detected
    llama.cpp pre-tokenizer name (tokenizer.ggml.pre) for tokenizers this module does not know.
    """
    spec = GGUF_ARCHS[require_arch(model, tuple(GGUF_ARCHS), "gguf")]
    if quant.lower() not in GGUF_QUANTS:
        raise ExportError(f"quant={quant!r} is not a GGUF type this exporter writes; choose from {', '.join(GGUF_QUANTS)}")
    qtype, ftype = GGUF_QUANTS[quant.lower()]
    out_path = Path(out_path)
    if out_path.suffix != ".gguf":
        out_path = out_path / f"model-{quant.lower()}.gguf"
    cfg = model.config
    vocab = tokenizer_vocab(tokenizer, cfg.vocab_size, pre=pre)
    with atomic_file(out_path) as tmp:
        writer = gguf.GGUFWriter(str(tmp), gguf.MODEL_ARCH_NAMES[spec.arch])
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(name or Path(str(getattr(cfg, "_name_or_path", "") or "model")).name)
        add_hparams(writer, cfg, ftype)
        add_vocab(writer, vocab, chat_template)
        for gguf_name, data, tensor_type in convert_tensors(model, spec, qtype):
            writer.add_tensor(gguf_name, data, raw_dtype=tensor_type)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return out_path


def add_hparams(writer: gguf.GGUFWriter, cfg: Any, ftype: gguf.LlamaFileType) -> None:
    """Write the architecture hyperparameters llama.cpp needs (sizes, heads, RoPE, norm epsilon, file type)."""
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    rope = dict(getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {})
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))))
    writer.add_rope_dimension_count(head_dim)
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


def tensor_type(data: np.ndarray, qtype: gguf.GGMLQuantizationType) -> gguf.GGMLQuantizationType:
    """The type a tensor is stored in: F32 for 1-D tensors, F16 when rows do not split into quant blocks, else qtype."""
    if data.ndim <= 1:
        return Q.F32
    block, _ = gguf.GGML_QUANT_SIZES[qtype]
    if data.shape[-1] % block:
        return Q.F16
    return qtype


def convert_tensors(model: Any, spec: GgufArch, qtype: gguf.GGMLQuantizationType):
    """Yield (gguf name, stored array, tensor type) for every weight of `model`, permuted and quantized."""
    cfg = model.config
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
        ttype = tensor_type(data, qtype)
        yield gguf_name, gguf.quants.quantize(data, ttype), ttype


@dataclass
class GgufVocab:
    """The tokenizer as GGUF metadata: tokens by id, their llama.cpp types, merges, special ids and flags."""

    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    pre: str
    special_ids: dict[str, int]
    add_bos: bool
    add_eos: bool


def tokenizer_vocab(tokenizer: Any, vocab_size: int, pre: str | None = None) -> GgufVocab:
    """Read a byte-level BPE tokenizer (GPT-2 style: SmolLM2, Llama 3, Qwen2) into GGUF vocabulary metadata.

    Ids the tokenizer does not use up to the model's vocab_size become `[PAD<id>]` UNUSED
    tokens, as llama.cpp's converter writes them, so the token list matches the embedding rows.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ExportError(f"GGUF export needs a fast (tokenizers) tokenizer; got {type(tokenizer).__name__}")
    tj = json.loads(backend.to_str())
    model_t, decoder = tj.get("model", {}), tj.get("decoder") or {}
    if model_t.get("type") != "BPE" or model_t.get("byte_fallback") or decoder.get("type") != "ByteLevel":
        raise ExportError("GGUF export supports byte-level BPE tokenizers (GPT-2 style: SmolLM2, Llama 3, Qwen2); "
                          f"this one is {model_t.get('type')} with a {decoder.get('type')} decoder. "
                          "Export --format safetensors and convert with llama.cpp's convert_hf_to_gguf.py")
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    if max(by_id) >= vocab_size:
        raise ExportError(f"the tokenizer has token id {max(by_id)} but the model's vocab_size is {vocab_size}; "
                          "resize the embeddings (model.resize_token_embeddings(len(tokenizer))) before exporting")
    added = {i: t.special for i, t in tokenizer.added_tokens_decoder.items()}
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL if i not in added else
                         gguf.TokenType.CONTROL if added[i] else gguf.TokenType.USER_DEFINED)
    probe = tokenizer("a")["input_ids"]
    special = {k: getattr(tokenizer, f"{k}_token_id", None) for k in ("bos", "eos", "unk", "pad")}
    return GgufVocab(
        tokens=tokens, token_types=[int(t) for t in types], merges=_merges(model_t.get("merges") or []),
        pre=pre or pre_tokenizer_name(tj.get("pre_tokenizer")),
        special_ids={k: int(v) for k, v in special.items() if v is not None},
        add_bos=special["bos"] is not None and probe[:1] == [special["bos"]],
        add_eos=special["eos"] is not None and probe[-1:] == [special["eos"]],
    )


def _merges(merges: list) -> list[str]:
    """Merges as llama.cpp's "a b" strings; a space inside a part is written as U+0120+... (as gguf.SpecialVocab does)."""
    if merges and not isinstance(merges[0], str):
        return [" ".join("".join(chr(ord(c) + 256) if c == " " else c for c in part) for part in pair)
                for pair in merges]
    return list(merges)


def pre_tokenizer_name(pre_tok: dict | None) -> str:
    """llama.cpp's name (tokenizer.ggml.pre) for a tokenizer.json pre-tokenizer, or ExportError if unknown."""
    steps = (pre_tok or {}).get("pretokenizers", [pre_tok] if pre_tok else [])
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"]:
        name = SPLIT_PRE_NAMES.get(steps[0].get("pattern", {}).get("Regex", ""))
        if name:
            return name
    raise ExportError(f"unknown pre-tokenizer {json.dumps(pre_tok)[:300]}; llama.cpp needs its name "
                      f"(tokenizer.ggml.pre). Pass pre=<name> (e.g. gpt2, smollm, llama-bpe, qwen2) if you know it")


def add_vocab(writer: gguf.GGUFWriter, vocab: GgufVocab, chat_template: str | None) -> None:
    """Write the tokenizer metadata (tokenizer.ggml.*) and the chat template (tokenizer.chat_template)."""
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    writer.add_token_merges(vocab.merges)
    for kind, token_id in vocab.special_ids.items():
        getattr(writer, f"add_{kind}_token_id")(token_id)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    if chat_template is not None:
        writer.add_chat_template(chat_template)
