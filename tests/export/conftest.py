"""Fixtures for the export tests: tiny models and the tokenizer, built once per module."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def llama():
    from tunelab.models import load_model

    return load_model("tiny-llama").eval()


@pytest.fixture(scope="module")
def qwen2():
    from tunelab.models import load_model

    return load_model("tiny-qwen2").eval()


@pytest.fixture(scope="module")
def tok():
    from tunelab.models import load_tokenizer

    return load_tokenizer("tiny-llama")


@pytest.fixture(scope="module")
def batch():
    """(2, 9) token ids from a fixed generator, so every test scores the same input."""
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 49152, (2, 9), generator=g)


SMALL_VOCAB = 2048


@pytest.fixture(scope="session")
def small_tok():
    return small_tokenizer()


def small_tokenizer():
    """SmolLM2's tokenizer cut to its first 2,048 ids (the byte alphabet, specials and the merges among them).

    Still a real byte-level BPE tokenizer with the ChatML template, but a model built for it has a
    2048 x hidden embedding instead of 49152 x hidden, so quantizing one takes a fraction of a second.
    """
    import json

    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from tunelab.models import load_tokenizer

    tok = load_tokenizer("tiny-llama")
    tj = json.loads(tok.backend_tokenizer.to_str())
    vocab = {t: i for t, i in tj["model"]["vocab"].items() if i < SMALL_VOCAB}
    tj["model"]["vocab"] = vocab
    tj["model"]["merges"] = [m for m in tj["model"]["merges"] if m[0] in vocab and m[1] in vocab and m[0] + m[1] in vocab]
    tj["added_tokens"] = [a for a in tj["added_tokens"] if a["id"] < SMALL_VOCAB]
    small = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(tj)), bos_token=tok.bos_token,
                                    eos_token=tok.eos_token, pad_token=tok.pad_token, unk_token=tok.unk_token)
    small.chat_template = tok.chat_template
    return small


def family_config(family: str, hidden: int = 256, vocab: int = SMALL_VOCAB):
    """A 2-layer config of a model family, built offline. With hidden 256 every weight row splits into
    K-quant super-blocks (256 values), so a K mix really stores K-quant blocks (hidden 64 would fall back)."""
    from transformers import (Gemma2Config, Gemma3TextConfig, LlamaConfig, MistralConfig, Phi3Config, Qwen2Config,
                              Qwen3Config)

    common = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                  bos_token_id=1, eos_token_id=2, pad_token_id=2)
    configs = {
        "llama": lambda: LlamaConfig(**common, tie_word_embeddings=True),
        "mistral": lambda: MistralConfig(**common),
        "qwen2": lambda: Qwen2Config(**common),
        # Qwen3 keeps head_dim 128 apart from hidden/heads (as the real models do)
        "qwen3": lambda: Qwen3Config(**common, head_dim=128),
        # Gemma scales queries by 1/sqrt(query_pre_attn_scalar): llama.cpp takes it to be head_dim and
        # transformers' GGUF loader to be 256 (its default), so both agree with head_dim 256 (Gemma 2 2B/9B's)
        "gemma2": lambda: Gemma2Config(**common, head_dim=256, query_pre_attn_scalar=256),
        "gemma3": lambda: Gemma3TextConfig(**common, head_dim=256, query_pre_attn_scalar=256),
        "phi3": lambda: Phi3Config(**common),
    }
    return configs[family]()


FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3")


def family_model(family: str, hidden: int = 256, vocab: int = SMALL_VOCAB):
    """A seeded random model of `family` whose norm weights are moved off 1 (so norm conversions are exercised)."""
    from transformers import AutoModelForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(family_config(family, hidden, vocab), dtype=torch.float32).eval()
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "norm" in name:
                    p.add_(torch.randn_like(p) * 0.1)
    return model
