"""Attention for packed batches: samples packed into one row never attend to each other.

A packed row holds several samples back to back; `position_ids` restart at 0 at each
sample, so the document of every token is known from where positions restart. The mask
is causal *and* same-document (block-diagonal causal).

- CUDA: `torch.nn.attention.flex_attention` with a `BlockMask` (Dong et al. 2024,
  "Flex Attention", arXiv:2412.05496): fully masked 128x128 tiles are skipped, so a row
  of short samples costs less than one long sample.
- Elsewhere (and as the reference): `scaled_dot_product_attention` with an explicit
  (B, 1, T, T) boolean mask.

`register_hf_attention()` adds the kernel to transformers' public `AttentionInterface`
as "tunelab_varlen"; load a model with `attn_implementation="tunelab_varlen"` (or
`model.set_attn_implementation`) and call `model(input_ids, **packed_forward_kwargs(position_ids))`. transformers
builds no mask for an implementation it does not know, so there is no (T, T) mask cost.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

HF_ATTENTION_NAME = "tunelab_varlen"


def document_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """Document index of each token, from positions that restart at each sample.

    position_ids: (B, T) -> (B, T) int32; a new document starts wherever the position
    does not follow the previous one by exactly 1 (as transformers' own packed-sequence check).
    """
    if position_ids.dim() != 2:
        raise ValueError(f"position_ids must be (batch, seq), got shape {tuple(position_ids.shape)}")
    step = position_ids[:, 1:] - position_ids[:, :-1]                       # (B, T-1)
    starts = torch.cat([torch.zeros_like(position_ids[:, :1]), (step != 1).long()], dim=1)
    return starts.cumsum(-1).to(torch.int32)                                 # (B, T)


def position_ids_from_lengths(lengths: list[list[int]], device: torch.device | str | None = None) -> torch.Tensor:
    """(B, T) positions restarting at 0 for each sample; every row's lengths must sum to the same T."""
    totals = {sum(row) for row in lengths}
    if len(totals) != 1:
        raise ValueError(f"every packed row must have the same total length, got {sorted(totals)}")
    rows = [torch.cat([torch.arange(n) for n in row]) for row in lengths]
    return torch.stack(rows).to(device)


def block_causal_mask(doc: torch.Tensor) -> torch.Tensor:
    """(B, T) document ids -> (B, 1, T, T) bool mask, True where query i may see key j."""
    t = doc.shape[-1]
    causal = torch.ones(t, t, dtype=torch.bool, device=doc.device).tril()     # (T, T)
    same = doc[:, :, None] == doc[:, None, :]                                  # (B, T, T)
    return (same & causal)[:, None]


def sdpa_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, doc: torch.Tensor,
                scale: float | None = None) -> torch.Tensor:
    """Reference/CPU path: SDPA with an explicit block-diagonal causal mask.

    q: (B, Hq, T, D); k, v: (B, Hkv, T, D) with Hq a multiple of Hkv (GQA); doc: (B, T).
    Returns (B, Hq, T, D).
    """
    if k.shape[1] != q.shape[1]:
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=block_causal_mask(doc), scale=scale)


_FLEX: dict[str, Callable] = {}


def _compiled_flex() -> Callable:
    """flex_attention is only fast when compiled; compile it once per process."""
    if "fn" not in _FLEX:
        from torch.nn.attention.flex_attention import flex_attention

        _FLEX["fn"] = torch.compile(flex_attention, dynamic=False)
    return _FLEX["fn"]


def flex_block_mask(doc: torch.Tensor):
    """(B, T) document ids -> flex_attention BlockMask for block-diagonal causal attention."""
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (doc[b, q_idx] == doc[b, kv_idx])

    bsz, t = doc.shape
    return create_block_mask(mask_mod, B=bsz, H=None, Q_LEN=t, KV_LEN=t, device=doc.device)


def flex_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask,
                scale: float | None = None) -> torch.Tensor:
    """CUDA path: compiled flex_attention with a document BlockMask. Shapes as `sdpa_varlen`."""
    if torch.compiler.is_compiling():  # inside a compiled layer: the outer compile handles it
        from torch.nn.attention.flex_attention import flex_attention

        return flex_attention(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=k.shape[1] != q.shape[1])
    return _compiled_flex()(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=k.shape[1] != q.shape[1])


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, doc: torch.Tensor,
                     scale: float | None = None, block_mask=None) -> torch.Tensor:
    """Block-diagonal causal attention over packed samples: flex on CUDA, SDPA + mask elsewhere.

    q: (B, Hq, T, D); k, v: (B, Hkv, T, D); doc: (B, T) from `document_ids`. Returns (B, Hq, T, D).
    Pass `block_mask` (from `flex_block_mask`) to reuse one mask across layers.
    """
    if q.is_cuda:
        return flex_varlen(q, k, v, block_mask if block_mask is not None else flex_block_mask(doc), scale)
    return sdpa_varlen(q, k, v, doc, scale)


def packed_forward_kwargs(position_ids: torch.Tensor) -> dict:
    """Keyword arguments for a transformers model's `forward` on a packed batch.

    Returns `position_ids` and, on CUDA, one flex `block_mask` built for the whole batch so
    the layers do not rebuild it. position_ids: (B, T).
    """
    kwargs: dict = {"position_ids": position_ids}
    if position_ids.is_cuda:
        kwargs["block_mask"] = flex_block_mask(document_ids(position_ids))
    return kwargs


def hf_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                         attention_mask: torch.Tensor | None, scaling: float | None = None,
                         dropout: float = 0.0, **kwargs) -> tuple[torch.Tensor, None]:
    """transformers attention-interface function: packed-aware attention keyed on `position_ids`.

    query: (B, Hq, T, D), key/value: (B, Hkv, T, D); returns ((B, T, Hq, D), None) as the
    interface expects. Uses the `block_mask` keyword (from `packed_forward_kwargs`) on CUDA, else
    derives documents from `position_ids`; with neither it is plain causal attention.
    """
    if dropout:
        raise ValueError("tunelab_varlen attention has no dropout; set attention_dropout=0 in the model config")
    if kwargs.get("sliding_window") is not None:
        raise ValueError("tunelab_varlen attention has no sliding window; use the model's own attention "
                         "(attn_implementation='sdpa' or 'flex_attention') for sliding-window layers")
    pos = kwargs.get("position_ids")
    block_mask = kwargs.get("block_mask")
    bsz, _, t, _ = query.shape
    if block_mask is not None and query.is_cuda:
        out = flex_varlen(query, key, value, block_mask, scale=scaling)
    elif pos is not None and pos.shape[-1] == t:
        out = varlen_attention(query, key, value, document_ids(pos.expand(bsz, -1)), scale=scaling)
    else:
        out = F.scaled_dot_product_attention(query, key, value, is_causal=True, scale=scaling,
                                             enable_gqa=key.shape[1] != query.shape[1])
    return out.transpose(1, 2).contiguous(), None


def register_hf_attention() -> str:
    """Register `hf_attention_forward` with transformers as "tunelab_varlen"; returns the name."""
    from transformers import AttentionInterface

    AttentionInterface.register(HF_ATTENTION_NAME, hf_attention_forward)
    return HF_ATTENTION_NAME
