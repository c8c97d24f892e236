"""Tiny random models of real architectures (2 layers, hidden 64) with a real tokenizer, for fast tests.

The weights come from a fixed seed, so `tiny-llama` names the same model in every process:
a run trained on it reloads exactly.
"""

from __future__ import annotations

import torch

TINY_MODELS = ("tiny-llama", "tiny-qwen2")


def tiny_tokenizer():
    """SmolLM2's BPE tokenizer (49,152 tokens, with its ChatML template), loaded from the bundled model."""
    from transformers import AutoTokenizer

    from tunelab.models.gguf import gguf_as_hf_dir, smollm2_gguf_path

    tok = AutoTokenizer.from_pretrained(str(gguf_as_hf_dir(smollm2_gguf_path())))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def tiny_config(name: str):
    """The transformers config of a tiny model."""
    from transformers import LlamaConfig, Qwen2Config

    common = dict(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                  bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=True)
    if name == "tiny-llama":
        return LlamaConfig(**common, rms_norm_eps=1e-5, rope_theta=10000.0)
    if name == "tiny-qwen2":
        return Qwen2Config(**common, rms_norm_eps=1e-6, rope_theta=10000.0)
    raise KeyError(f"unknown tiny model {name!r}; choose from {', '.join(TINY_MODELS)}")


def build_tiny_model(name: str):
    """A tiny causal LM with seeded random weights (the global RNG is left untouched)."""
    from transformers import AutoModelForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        model = AutoModelForCausalLM.from_config(tiny_config(name), dtype=torch.float32)
    return model
