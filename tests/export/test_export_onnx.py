"""ONNX export: onnxruntime logits against torch (with and without KV cache), dynamic axes, files beside the graph."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from transformers import AutoTokenizer

from tunelab.export import ExportError, export


@pytest.fixture(scope="module")
def plain_dir(llama, tok, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "plain"
    assert export(llama, tok, tok.chat_template, "onnx", out, with_past=False) == out / "model.onnx"
    return out


@pytest.fixture(scope="module")
def past_dir(llama, tok, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "past"
    assert export(llama, tok, tok.chat_template, "onnx", out) == out / "model.onnx"
    return out


def session(path):
    return ort.InferenceSession(str(path / "model.onnx"), providers=["CPUExecutionProvider"])


def test_logits_only_graph_matches_torch_with_padding(plain_dir, llama):
    sess = session(plain_dir)
    g = torch.Generator().manual_seed(1)
    for shape, pad in [((1, 5), 2), ((3, 11), 2), ((2, 7), 0)]:  # none is the (2, 5) example used at export
        ids = torch.randint(0, 49152, shape, generator=g)
        mask = torch.ones_like(ids)
        mask[0, :pad] = 0  # left padding on the first row
        got = sess.run(["logits"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
        with torch.no_grad():
            want = llama(input_ids=ids, attention_mask=mask).logits.numpy()
        assert got.shape == want.shape
        real = mask.numpy().astype(bool)  # logits at padded positions are meaningless in both
        np.testing.assert_allclose(got[real], want[real], atol=1e-4, rtol=1e-4)


def test_kv_cache_graph_decodes_step_by_step_like_torch(past_dir, llama):
    """Prefill with an empty past, then feed one token at a time with the presents; compare with one full pass."""
    sess = session(past_dir)
    cfg = llama.config
    layers = [f"{i}.{p}" for i in range(cfg.num_hidden_layers) for p in ("key", "value")]
    ids = torch.randint(0, 49152, (2, 9), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # row 1 is left-padded
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T): what generate() feeds
    with torch.no_grad():
        want = llama(input_ids=ids, attention_mask=mask, position_ids=positions).logits.numpy()  # (B, T, V)
    past = {f"past_key_values.{n}": np.zeros((2, cfg.num_key_value_heads, 0, cfg.head_dim), np.float32)
            for n in layers}
    start = 0
    for stop in (6, 7, 8, 9):  # a 6-token prefill, then three single-token steps
        out = sess.run(None, {"input_ids": ids[:, start:stop].numpy(), "attention_mask": mask[:, :stop].numpy(),
                              "position_ids": positions[:, start:stop].numpy(), **past})
        real = mask[:, start:stop].numpy().astype(bool)
        np.testing.assert_allclose(out[0][real], want[:, start:stop][real], atol=1e-4, rtol=1e-4)
        assert out[1].shape == (2, cfg.num_key_value_heads, stop, cfg.head_dim)
        past = {f"past_key_values.{n}": t for n, t in zip(layers, out[1:])}
        start = stop


def test_graph_io_names_types_and_dynamic_axes(plain_dir, past_dir):
    graph = onnx.load(str(plain_dir / "model.onnx")).graph
    ins = {v.name: v.type.tensor_type for v in graph.input}
    outs = {v.name: v.type.tensor_type for v in graph.output}
    assert list(ins) == ["input_ids", "attention_mask"] and list(outs) == ["logits"]
    assert all(t.elem_type == onnx.TensorProto.INT64 for t in ins.values())
    assert outs["logits"].elem_type == onnx.TensorProto.FLOAT
    for t in ins.values():
        assert [d.HasField("dim_param") for d in t.shape.dim] == [True, True]
    dims = outs["logits"].shape.dim
    assert dims[0].HasField("dim_param") and dims[1].HasField("dim_param") and dims[2].dim_value == 49152
    past = onnx.load(str(past_dir / "model.onnx")).graph
    assert [v.name for v in past.input] == ["input_ids", "attention_mask", "position_ids", "past_key_values.0.key",
                                            "past_key_values.0.value", "past_key_values.1.key", "past_key_values.1.value"]
    assert [v.name for v in past.output] == ["logits", "present.0.key", "present.0.value", "present.1.key",
                                             "present.1.value"]
    key_dims = past.input[3].type.tensor_type.shape.dim  # (batch, kv_heads=2, past_sequence, head_dim=16)
    assert [d.dim_value for d in key_dims][1::2] == [2, 16] and key_dims[2].HasField("dim_param")


def test_tokenizer_and_chat_template_travel_with_the_graph(plain_dir, tok):
    back = AutoTokenizer.from_pretrained(str(plain_dir / "tokenizer"))
    assert back("Hello world 123")["input_ids"] == tok("Hello world 123")["input_ids"]
    assert (plain_dir / "chat_template.jinja").read_text() == tok.chat_template


def test_bf16_qwen2_exports_in_float32_without_touching_it(tok, tmp_path):
    from tunelab.models import load_model

    model = load_model("tiny-qwen2", dtype="bfloat16")
    path = export(model, tok, None, "onnx", tmp_path / "q", with_past=False)
    assert next(model.parameters()).dtype == torch.bfloat16
    ids = np.array([[5, 900, 31, 7]], dtype=np.int64)
    got = ort.InferenceSession(str(path)).run(["logits"], {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0]
    with torch.no_grad():
        want = model.float()(torch.from_numpy(ids)).logits.numpy()
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_unsupported_architecture_is_named(tok, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    with pytest.raises(ExportError, match=r"'onnx' does not support architecture 'gpt2'.*supported architectures: "
                                          r"llama, qwen2, qwen3, mistral, gemma2, gemma3_text, phi3"):
        export(model, tok, None, "onnx", tmp_path / "g")
