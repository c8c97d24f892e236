"""Architecture shapes of real models, for random-weight benchmarking (throughput does not depend on weights)."""

from __future__ import annotations

from typing import Any

# name -> (transformers config class name, config kwargs). Numbers from each model's config.json.
SHAPES: dict[str, tuple[str, dict[str, Any]]] = {
    "tiny": ("Qwen2Config", {
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 1024, "tie_word_embeddings": True,
        "max_position_embeddings": 4096}),
    "qwen2.5-0.5b": ("Qwen2Config", {
        "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
        "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True, "rope_theta": 1e6,
        "max_position_embeddings": 32768}),
    "qwen2.5-1.5b": ("Qwen2Config", {
        "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12,
        "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True, "rope_theta": 1e6,
        "max_position_embeddings": 32768}),
    "qwen2.5-7b": ("Qwen2Config", {
        "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
        "num_key_value_heads": 4, "vocab_size": 152064, "tie_word_embeddings": False, "rope_theta": 1e6,
        "max_position_embeddings": 32768}),
    "llama3-8b": ("LlamaConfig", {
        "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
        "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": False, "rope_theta": 500000.0,
        "max_position_embeddings": 8192}),
}


def build_config(shape: str, **overrides: Any):
    """A transformers config for `shape` (see SHAPES); unknown names raise with the valid list."""
    import transformers

    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; choose one of {', '.join(SHAPES)}")
    cls_name, kwargs = SHAPES[shape]
    return getattr(transformers, cls_name)(**{**kwargs, **overrides})
