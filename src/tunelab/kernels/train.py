"""Glue between `train.speed` and the training loop: chunked loss from hidden states, fused LoRA, compile.

`chunked_causal_lm_loss` runs the model's decoder for the final hidden states and hands them,
with the lm_head weight, to `linear_ce.linear_cross_entropy`, so the (B*T, V) logits are never
held at once. It returns None when the model or method needs the full forward (prompt/prefix
tuning add virtual tokens; DDP/FSDP wrappers must see the forward call; some models scale or
soft-cap their logits), and the caller then uses the plain path. `speed_context` fuses LoRA and
compiles decoder layers on CUDA for the length of training and unfuses before anything is saved.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from tunelab.config.speed import SpeedCfg
from tunelab.kernels.linear_ce import IGNORE_INDEX, linear_cross_entropy, shift_labels

# config attributes that change logits after lm_head; any of them set -> plain path
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")
_NOTED: set[str] = set()


def note_once(message: str) -> None:
    """Print a one-line note to stderr the first time `message` comes up in this process."""
    if message not in _NOTED:
        _NOTED.add(message)
        print(f"note: {message}", file=sys.stderr)


def _unwrap_peft(model: nn.Module) -> tuple[nn.Module | None, str | None]:
    """(the transformers model under a PEFT wrapper, or `model` itself; reason it is unsupported)."""
    peft_cfg = getattr(model, "active_peft_config", None)
    if peft_cfg is None:
        return model, None
    if getattr(peft_cfg, "is_prompt_learning", False):
        return None, f"{peft_cfg.peft_type} adds virtual tokens"
    return model.get_base_model(), None


def lm_parts(model: nn.Module) -> tuple[nn.Module, nn.Linear] | str:
    """(decoder returning `last_hidden_state`, lm_head Linear) of a causal LM, or why the chunked loss cannot apply.

    Handles PEFT-wrapped models (LoRA, IA3, ...: the adapters live inside the decoder) and tied
    embeddings (lm_head.weight *is* the embedding Parameter, so its gradient adds up as usual).
    """
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(model, DistributedDataParallel):
        return "DDP must see the model's own forward call"
    try:
        from torch.distributed.fsdp import FSDPModule

        if isinstance(model, FSDPModule):
            return "FSDP must see the model's own forward call"
    except ImportError:  # torch built without distributed
        pass
    base, reason = _unwrap_peft(model)
    if base is None:
        return reason
    if not (hasattr(base, "get_decoder") and hasattr(base, "get_output_embeddings")):
        return f"{type(base).__name__} is not a transformers causal LM"
    config = getattr(base, "config", None)
    if getattr(config, "is_encoder_decoder", False):
        return "encoder-decoder models are not supported"
    for key in _LOGIT_TRANSFORMS:
        value = getattr(config, key, None)
        if value not in (None, 1, 1.0):
            return f"the model transforms its logits ({key}={value})"
    decoder, head = base.get_decoder(), base.get_output_embeddings()
    if decoder is None or type(head) is not nn.Linear:  # e.g. a LoRA-wrapped or quantized lm_head
        return f"lm_head is a {type(head).__name__}, not a plain Linear"
    return decoder, head


def chunked_causal_lm_loss(model: nn.Module, inputs: dict, labels: torch.Tensor, label_smoothing: float = 0.0,
                           speed: SpeedCfg | None = None) -> torch.Tensor | None:
    """Summed next-token cross-entropy over target tokens, from hidden states; None when unsupported.

    Same value and gradients as `engine.loss.causal_lm_loss_sum(model(**inputs).logits, labels)`
    (up to float summation order), with peak extra memory of one chunk's logits instead of (B, T, V).
    inputs: the forward kwargs (input_ids (B, T) plus attention_mask or packed position_ids).
    """
    speed = speed or SpeedCfg()
    parts = lm_parts(model)
    if isinstance(parts, str):
        note_once(f"train.speed.chunked_ce: {parts}; using the plain loss (full logits)")
        return None
    decoder, head = parts
    hidden = decoder(**inputs, use_cache=False).last_hidden_state                      # (B, T, H)
    return linear_cross_entropy(hidden, head.weight, shift_labels(labels, IGNORE_INDEX), head.bias,
                                label_smoothing=label_smoothing, chunk_size=speed.ce_chunk,
                                backend=speed.ce_backend)


def _fused_lora_blocker(train_cfg) -> str | None:
    """Why fused LoRA must stay off for this run: fused modules rename state-dict keys mid-run."""
    if train_cfg.save_every or train_cfg.early_stopping_patience or train_cfg.resume != "never":
        return "mid-run checkpoints (save_every, early stopping, resume) need PEFT's own modules"
    return None


@contextmanager
def speed_context(model: nn.Module, train_cfg, device: torch.device) -> Iterator[None]:
    """Apply `train_cfg.speed`'s CUDA-only paths for the length of the block; unfuse LoRA on exit.

    Saving (method.save, PEFT's save_pretrained) happens after the block, so adapter files keep
    PEFT's key names. Compiled layers keep their state-dict keys and stay compiled.
    """
    speed: SpeedCfg = train_cfg.speed
    cuda = torch.device(device).type == "cuda"
    fused = 0
    if (speed.fused_lora or speed.compile_layers) and not cuda:
        note_once("train.speed.fused_lora / compile_layers apply on CUDA only; skipped")
    elif speed.fused_lora and (blocker := _fused_lora_blocker(train_cfg)):
        note_once(f"train.speed.fused_lora: {blocker}; skipped")
    elif speed.fused_lora:
        from tunelab.kernels.lora import fuse_lora

        fused = fuse_lora(model)
    if cuda and speed.compile_layers:
        from tunelab.kernels.regions import compile_layers

        compile_layers(model)
    try:
        yield
    finally:
        if fused:
            from tunelab.kernels.lora import unfuse_lora

            unfuse_lora(model)
