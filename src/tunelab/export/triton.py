"""`triton`: a Triton Inference Server model repository serving the ONNX export with the onnxruntime backend.

Layout (serve it with `tritonserver --model-repository <out_path>`):

    <out_path>/<model_name>/config.pbtxt
    <out_path>/<model_name>/1/model.onnx
    <out_path>/<model_name>/tokenizer/            (for clients; Triton ignores non-numeric folders)
    <out_path>/<model_name>/chat_template.jinja

config.pbtxt is generated from the exported graph itself (names, element types, and -1 for
every dynamic axis), so it cannot drift from the model it describes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.export.base import ExportError
from tunelab.export.onnx import export_onnx
from tunelab.utils.io import atomic_dir, atomic_write_text

# onnx TensorProto element type -> Triton data_type
ONNX_TO_TRITON: dict[int, str] = {
    1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 5: "TYPE_INT16", 6: "TYPE_INT32", 7: "TYPE_INT64",
    9: "TYPE_BOOL", 10: "TYPE_FP16", 11: "TYPE_FP64", 16: "TYPE_BF16",
}


def io_specs(onnx_path: str | Path) -> tuple[list[dict], list[dict]]:
    """The graph's inputs and outputs as [{"name", "data_type", "dims"}], dims -1 where the axis is dynamic."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph

    def spec(value: Any) -> dict:
        t = value.type.tensor_type
        if t.elem_type not in ONNX_TO_TRITON:
            raise ExportError(f"{onnx_path}: tensor {value.name!r} has ONNX type {t.elem_type}, which Triton cannot carry")
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        return {"name": value.name, "data_type": ONNX_TO_TRITON[t.elem_type], "dims": dims}

    return [spec(v) for v in graph.input], [spec(v) for v in graph.output]


def config_pbtxt(model_name: str, inputs: list[dict], outputs: list[dict], *, kind: str = "KIND_CPU",
                 count: int = 1) -> str:
    """Triton's config.pbtxt (protobuf text) for an ONNX model whose dims include the batch axis (max_batch_size 0)."""
    def block(items: list[dict]) -> str:
        rows = [f'  {{\n    name: "{s["name"]}"\n    data_type: {s["data_type"]}\n'
                f'    dims: [ {", ".join(str(d) for d in s["dims"])} ]\n  }}' for s in items]
        return ",\n".join(rows)

    return (f'name: "{model_name}"\nbackend: "onnxruntime"\nmax_batch_size: 0\n'
            f"input [\n{block(inputs)}\n]\noutput [\n{block(outputs)}\n]\n"
            f"instance_group [\n  {{\n    kind: {kind}\n    count: {count}\n  }}\n]\n")


def export_triton(model: Any, tokenizer: Any, chat_template: str | None, out_path: str | Path, *,
                  model_name: str = "tunelab", version: int = 1, kind: str = "KIND_CPU", count: int = 1,
                  with_past: bool = False, opset: int | None = None) -> Path:
    """Write a Triton model repository at `out_path` holding `model_name`; return the model's folder.

    `kind` is KIND_CPU or KIND_GPU (instance_group); `count` the instances per device. The graph
    is logits-only by default (stateless requests); `with_past=True` serves the KV-cache graph,
    whose client sends the past and keeps the presents (see tunelab.export.onnx).
    """
    if kind not in ("KIND_CPU", "KIND_GPU"):
        raise ExportError(f"kind={kind!r}: choose KIND_CPU or KIND_GPU")
    if not model_name or "/" in model_name or model_name.startswith("."):
        raise ExportError(f"model_name={model_name!r}: must be a plain folder name")
    out_path = Path(out_path)
    with atomic_dir(out_path / model_name) as tmp:
        onnx_file = export_onnx(model, tokenizer, None, tmp / str(version), with_tokenizer=False,
                                with_past=with_past, opset=opset)
        inputs, outputs = io_specs(onnx_file)
        atomic_write_text(tmp / "config.pbtxt", config_pbtxt(model_name, inputs, outputs, kind=kind, count=count))
        tokenizer.save_pretrained(tmp / "tokenizer")
        if chat_template is not None:
            atomic_write_text(tmp / "chat_template.jinja", chat_template)
    return out_path / model_name
