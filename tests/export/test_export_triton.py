"""Triton repository: config.pbtxt parsed and checked against the ONNX graph it serves, and the layout Triton expects."""

from __future__ import annotations

import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tunelab.export import ExportError, export

TRITON_TYPES = {onnx.TensorProto.INT64: "TYPE_INT64", onnx.TensorProto.FLOAT: "TYPE_FP32"}


def parse_pbtxt(text: str) -> dict:
    """A small protobuf text-format reader: `key: value`, `key { ... }`, `key [ {...}, ... ]` and `[1, 2]` lists."""
    tokens = re.findall(r'"[^"]*"|[{}\[\]:,]|[^\s{}\[\]:,"]+', text)
    pos = 0

    def value():
        nonlocal pos
        tok = tokens[pos]
        pos += 1
        if tok == "{":
            return message("}")
        if tok == "[":
            items = []
            while tokens[pos] != "]":
                items.append(value())
                if tokens[pos] == ",":
                    pos += 1
            pos += 1
            return items
        if tok.startswith('"'):
            return tok[1:-1]
        return int(tok) if re.fullmatch(r"-?\d+", tok) else tok

    def message(end):
        nonlocal pos
        out = {}
        while pos < len(tokens) and tokens[pos] != end:
            key = tokens[pos]
            pos += 1
            if tokens[pos] == ":":
                pos += 1
            out[key] = value()
        pos += 1
        return out

    return message(None)


@pytest.fixture(scope="module")
def repo(llama, tok, tmp_path_factory):
    root = tmp_path_factory.mktemp("triton") / "repo"
    model_dir = export(llama, tok, tok.chat_template, "triton", root, model_name="smol", kind="KIND_CPU", count=2)
    assert model_dir == root / "smol"
    return root


def test_layout(repo):
    assert sorted(p.name for p in (repo / "smol").iterdir()) == ["1", "chat_template.jinja", "config.pbtxt", "tokenizer"]
    assert sorted(p.name for p in (repo / "smol" / "1").iterdir()) == ["model.onnx"]


def test_config_matches_the_onnx_graph(repo):
    cfg = parse_pbtxt((repo / "smol" / "config.pbtxt").read_text())
    assert cfg["name"] == "smol" and cfg["backend"] == "onnxruntime" and cfg["max_batch_size"] == 0
    assert cfg["instance_group"] == [{"kind": "KIND_CPU", "count": 2}]
    graph = onnx.load(str(repo / "smol" / "1" / "model.onnx")).graph

    def expected(values):
        return [{"name": v.name, "data_type": TRITON_TYPES[v.type.tensor_type.elem_type],
                 "dims": [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim]}
                for v in values]

    assert cfg["input"] == expected(graph.input)
    assert cfg["output"] == expected(graph.output)
    assert cfg["output"][0]["dims"] == [-1, -1, 49152]


def test_served_model_runs_with_config_shapes(repo):
    """Feed the model inputs shaped as config.pbtxt allows and check the output against the declared dims."""
    cfg = parse_pbtxt((repo / "smol" / "config.pbtxt").read_text())
    session = ort.InferenceSession(str(repo / "smol" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    feeds = {i["name"]: np.ones((2, 6), dtype=np.int64) for i in cfg["input"]}
    (logits,) = session.run([o["name"] for o in cfg["output"]], feeds)
    assert logits.dtype == np.float32
    assert [s if d == -1 else d for s, d in zip(logits.shape, cfg["output"][0]["dims"])] == list(logits.shape)
    assert logits.shape == (2, 6, 49152)


def test_bad_kind_and_name_are_refused(llama, tok, tmp_path):
    with pytest.raises(ExportError, match="KIND_CPU or KIND_GPU"):
        export(llama, tok, None, "triton", tmp_path, kind="GPU")
    with pytest.raises(ExportError, match="plain folder name"):
        export(llama, tok, None, "triton", tmp_path, model_name="a/b")


def test_parser_reads_nested_messages():
    cfg = parse_pbtxt('name: "m"\ninput [ { name: "x" dims: [ -1, 3 ] } ]\nparameters { key: "k" }')
    assert cfg == {"name": "m", "input": [{"name": "x", "dims": [-1, 3]}], "parameters": {"key": "k"}}


def test_kv_cache_repository_declares_past_and_present(llama, tok, tmp_path):
    export(llama, tok, None, "triton", tmp_path, model_name="kv", with_past=True)
    cfg = parse_pbtxt((tmp_path / "kv" / "config.pbtxt").read_text())
    assert [i["name"] for i in cfg["input"]][:3] == ["input_ids", "attention_mask", "position_ids"]
    past = {i["name"]: i for i in cfg["input"][3:]}
    assert set(past) == {f"past_key_values.{n}.{p}" for n in (0, 1) for p in ("key", "value")}
    assert all(i["dims"] == [-1, 2, -1, 16] and i["data_type"] == "TYPE_FP32" for i in past.values())
    assert [o["name"] for o in cfg["output"]] == ["logits"] + [f"present.{n}.{p}" for n in (0, 1) for p in ("key", "value")]
    assert not (tmp_path / "kv" / "chat_template.jinja").exists()  # none was given
