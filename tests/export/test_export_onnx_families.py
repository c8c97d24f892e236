"""ONNX export of the other families (llama has its own tests in test_export_onnx.py): the KV-cache graph run
by onnxruntime, prefill then single-token steps, gives torch's logits for a left-padded batch."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from tests.export.conftest import family_model

from tunelab.export import export


@pytest.mark.parametrize("family", ["mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3"])
def test_kv_cache_graph_matches_torch(family, small_tok, tmp_path):
    model = family_model(family, hidden=64)
    path = export(model, small_tok, small_tok.chat_template, "onnx", tmp_path / family)
    assert (tmp_path / family / "chat_template.jinja").read_text() == small_tok.chat_template
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    layers = [f"{i}.{p}" for i in range(cfg.num_hidden_layers) for p in ("key", "value")]
    ids = torch.randint(17, 2048, (2, 8), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # row 1 is left-padded
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits.numpy()  # (B, T, V)
    past = {f"past_key_values.{n}": np.zeros((2, cfg.num_key_value_heads, 0, head_dim), np.float32) for n in layers}
    start = 0
    for stop in (6, 7, 8):  # a 6-token prefill, then two single-token steps through the cache
        out = sess.run(None, {"input_ids": ids[:, start:stop].numpy(), "attention_mask": mask[:, :stop].numpy(),
                              "position_ids": positions[:, start:stop].numpy(), **past})
        real = mask[:, start:stop].numpy().astype(bool)
        np.testing.assert_allclose(out[0][real], want[:, start:stop][real], atol=1e-4, rtol=1e-4)
        past = {f"past_key_values.{n}": t for n, t in zip(layers, out[1:])}
        start = stop
