"""`onnx`: the causal LM as an ONNX graph for onnxruntime (and Triton), with or without a KV cache.

Exported with PyTorch's dynamo exporter (`torch.onnx.export(..., dynamo=True)`: torch.export +
onnxscript), batch and sequence lengths dynamic. Two graph shapes:

- with_past=True (default), the layout Optimum and onnxruntime-genai use:
  inputs  input_ids (B, S), attention_mask (B, P+S), position_ids (B, S),
          past_key_values.{i}.key / .value (B, kv_heads, P, head_dim) for every layer i (P may be 0);
  outputs logits (B, S, V), present.{i}.key / .value (B, kv_heads, P+S, head_dim).
  Feed the presents back as the next step's past: generation costs one token per step.
- with_past=False: input_ids, attention_mask (B, S) -> logits (B, S, V); every call recomputes
  the prefix. Simplest to serve (scoring, classification, short outputs).

Beside the graph the folder gets the tokenizer and chat_template.jinja, so a client builds
prompts exactly as in training.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

from tunelab.export.base import ExportError, require_arch
from tunelab.utils.io import atomic_dir, atomic_write_text

ONNX_ARCHS = ("llama", "qwen2", "qwen3", "mistral", "gemma2", "gemma3_text", "phi3")


def io_names(num_layers: int, with_past: bool) -> tuple[list[str], list[str]]:
    """The graph's input and output names for a model with `num_layers` layers."""
    if not with_past:
        return ["input_ids", "attention_mask"], ["logits"]
    kv = [f"{i}.{part}" for i in range(num_layers) for part in ("key", "value")]
    return (["input_ids", "attention_mask", "position_ids", *(f"past_key_values.{n}" for n in kv)],
            ["logits", *(f"present.{n}" for n in kv)])


def _logits_module(model: Any):
    """forward(input_ids, attention_mask) -> logits, no KV cache."""
    import torch

    class LogitsOnly(torch.nn.Module):
        def __init__(self, lm: Any):
            super().__init__()
            self.lm = lm

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            # (B, S) int64, (B, S) int64 -> (B, S, V)
            return self.lm(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    return LogitsOnly(model).eval()


def _with_past_module(model: Any):
    """forward(input_ids, attention_mask, position_ids, *past) -> (logits, *present), the cache as flat tensors."""
    import torch
    from transformers import DynamicCache

    class WithPast(torch.nn.Module):
        def __init__(self, lm: Any):
            super().__init__()
            self.lm = lm

        def forward(self, input_ids, attention_mask, position_ids, *past):
            # input_ids/position_ids (B, S), attention_mask (B, P+S), past[2i], past[2i+1]: (B, H_kv, P, D)
            cache = DynamicCache(config=self.lm.config)
            for i in range(len(past) // 2):
                cache.update(past[2 * i], past[2 * i + 1], i)
            out = self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          past_key_values=cache, use_cache=True)
            present = [t for layer in out.past_key_values.layers for t in (layer.keys, layer.values)]
            return (out.logits, *present)  # (B, S, V), then (B, H_kv, P+S, D) per layer and part

    return WithPast(model).eval()


def _example(model: Any, with_past: bool):
    """Example inputs and dynamic shapes for tracing.

    Batch 2 with varied ids, a padded row and a non-empty past: size-0/1 axes and all-ones masks
    would be specialised while tracing (or take a mask-free attention shortcut) and then baked
    into the graph, which then gives wrong logits for other inputs.
    """
    import torch

    cfg = model.config
    batch, seq, total = torch.export.Dim("batch"), torch.export.Dim("sequence"), torch.export.Dim("total_sequence")
    steps, past_len = 5, 3 if with_past else 0
    ids = torch.arange(2 * steps, dtype=torch.long).reshape(2, steps) * 7 % cfg.vocab_size  # (2, S)
    mask = torch.ones(2, past_len + steps, dtype=torch.long)  # (2, P+S)
    mask[1, :2] = 0
    if not with_past:
        return (ids, mask), {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}}
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    positions = torch.arange(past_len, past_len + steps).expand(2, steps)  # (2, S)
    g = torch.Generator().manual_seed(0)
    past = tuple(torch.randn(2, kv_heads, past_len, head_dim, generator=g) for _ in range(2 * cfg.num_hidden_layers))
    past_dim = torch.export.Dim("past_sequence", min=0)
    shapes = {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: total},
              "position_ids": {0: batch, 1: seq}, "past": tuple({0: batch, 2: past_dim} for _ in past)}
    return (ids, mask, positions, *past), shapes


def export_onnx(model: Any, tokenizer: Any, chat_template: str | None, out_path: str | Path, *,
                with_past: bool = True, opset: int | None = None, file_name: str = "model.onnx",
                with_tokenizer: bool = True) -> Path:
    """Export `model` to `<out_path>/model.onnx` (plus tokenizer and chat template); return the .onnx path.

    See the module docstring for the inputs and outputs of each graph shape. Weights are stored
    in float32 (a half-precision model is exported from a float32 copy; the caller's model is not
    touched), in the one file up to protobuf's 2 GB limit, else in `model.onnx.data` beside it.
    `with_tokenizer=False` writes the graph alone (the Triton exporter places the tokenizer itself).
    """
    import torch

    require_arch(model, ONNX_ARCHS, "onnx")
    out_path = Path(out_path)
    if next(model.parameters()).dtype != torch.float32:
        model = copy.deepcopy(model).float()
    module = _with_past_module(model) if with_past else _logits_module(model)
    args, shapes = _example(model, with_past)
    inputs, outputs = io_names(model.config.num_hidden_layers, with_past)
    big = sum(p.numel() * 4 for p in model.parameters()) > 1_800_000_000
    with atomic_dir(out_path) as tmp:
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=r".*will not be used, since it shares the same shape")
                torch.onnx.export(module, args, str(tmp / file_name), dynamo=True, input_names=inputs,
                                  output_names=outputs, dynamic_shapes=shapes, opset_version=opset,
                                  external_data=big, verbose=False)
        except Exception as e:
            raise ExportError(f"torch.onnx.export failed for {type(model).__name__}: {e}") from e
        if with_tokenizer:
            tokenizer.save_pretrained(tmp / "tokenizer")
            if chat_template is not None:
                atomic_write_text(tmp / "chat_template.jinja", chat_template)
    return out_path / file_name
