"""Glue between `train.speed` and the training loop: chunked loss from hidden states, fused LoRA, compile.

`chunked_causal_lm_loss` runs the model's decoder for the final hidden states and hands them,
with the lm_head weight, to `linear_ce.linear_cross_entropy`, so the (B*T, V) logits are never
held at once. It returns None when the model or method needs the full forward (prompt/prefix
tuning add virtual tokens; DDP/FSDP wrappers must see the forward call; some models scale or
soft-cap their logits), and the caller then uses the plain path. `plan_speed` decides each fast path
of `train.speed` (and why any is off); `speed_context` applies them for the length of training and
undoes them before the final weights are saved (CUDA graphs of the compiled layers included,
when asked for).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from tunelab.config.speed import AUTO_OFF, SpeedCfg
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


def with_block_mask(model: nn.Module, inputs: dict) -> dict:
    """`inputs` plus one flex `block_mask` for the whole batch when the model attends through tunelab_varlen on CUDA.

    Built once per batch from the packed `position_ids` and shared by every layer (the layers would
    otherwise each derive it). Other models and unpacked batches: `inputs` unchanged.
    """
    pos = inputs.get("position_ids")
    if pos is None or not pos.is_cuda:
        return inputs
    base = _unwrap_peft(model)[0] or model
    from tunelab.kernels.varlen import HF_ATTENTION_NAME, packed_forward_kwargs

    if getattr(getattr(base, "config", None), "_attn_implementation", None) != HF_ATTENTION_NAME:
        return inputs
    return {**inputs, **packed_forward_kwargs(pos)}


@dataclass
class SpeedPlan:
    """Which fast paths a run uses (`on`) and, for each one that is off, why (`off`)."""

    on: list[str] = field(default_factory=list)
    off: dict[str, str] = field(default_factory=dict)

    def __contains__(self, name: str) -> bool:
        return name in self.on

    def line(self) -> str:
        """The one `speed:` line a run prints."""
        text = "speed: " + (", ".join(self.on) if self.on else "no fast path")
        if self.off:
            text += "; off: " + "; ".join(f"{k} ({v})" for k, v in self.off.items())
        return text


def plan_speed(model: nn.Module, train_cfg, device: torch.device, packed: bool = False,
               optimizer: str | None = None) -> SpeedPlan:
    """Decide each fast path of `train_cfg.speed` for this model, device and data, with the reason for any off.

    `optimizer`: the resolved optimizer name (fused AdamW is reported, it is built by the engine).
    """
    speed: SpeedCfg = train_cfg.speed
    dev = torch.device(device).type
    plan = SpeedPlan()

    def decide(name: str, blocker: str | None = None) -> None:
        value = getattr(speed, name)
        if speed.mode == "plain":
            plan.off[name] = "train.speed.mode=plain"
        elif value is False:
            plan.off[name] = f"train.speed.{name}=false"
        elif not speed.wants(name, dev):
            plan.off[name] = f"auto: {dev} (on for CUDA)"
        elif blocker:
            plan.off[name] = blocker
        else:
            plan.on.append(name)

    parts = lm_parts(model)
    decide("chunked_ce", parts if isinstance(parts, str) else None)
    n_lora = sum(1 for m in model.modules() if _is_lora_linear(m))
    decide("fused_lora", None if n_lora else "no plain LoRA linears (4-bit bases keep PEFT's modules)")
    quantized = any(getattr(m, "tunelab_quantized", None) for m in model.modules())
    decide("compile_layers", "4-bit base: bitsandbytes layers run eager" if quantized
           else None if _has_layers(model) else "no decoder-layer list found")
    decide("flex_attention", None if packed else "rows are not packed (data.packing)")
    decide("prefetch")
    reason = _graphs_blocker(plan, train_cfg, dev)
    if reason:
        plan.off["cuda_graphs"] = reason
    else:
        plan.on.append("cuda_graphs")
    if speed.mode == "lean":
        plan.on.append("lean (checkpoint every layer)")
    if optimizer is not None:
        if optimizer == "adamw" and dev == "cuda":  # the engine's choice, whatever the mode
            plan.on.append("fused_adamw")
        else:
            plan.off["fused_adamw"] = f"optimizer {optimizer}" if optimizer != "adamw" else f"{dev}"
    return plan


def _graphs_blocker(plan: SpeedPlan, train_cfg, dev: str) -> str | None:
    """Why `train.speed.cuda_graphs` stays off for this run, or None when the layers can be captured.

    A CUDA graph replays one recorded shape and keeps its outputs in a memory pool of its own, so it needs
    compiled layers seeing one shape every step (packed rows padded to data.max_length, which the flex path
    does), gradients that are not accumulated across micro-batches (a second backward would add into a
    `.grad` living in graph memory that the next replay overwrites) and no collective inside the region.
    """
    speed: SpeedCfg = train_cfg.speed
    if speed.mode == "plain":
        return "train.speed.mode=plain"
    if speed.cuda_graphs is False:
        return "train.speed.cuda_graphs=false"
    if speed.cuda_graphs == "auto":
        return AUTO_OFF["cuda_graphs"]
    if dev != "cuda":
        return f"needs CUDA (device {dev})"
    if speed.mode == "lean":
        return "lean mode: a memory mode, and graphs hold a memory pool of their own"
    if getattr(train_cfg, "gradient_checkpointing", False):
        return "train.gradient_checkpointing: a memory mode, and graphs hold a memory pool of their own"
    if "compile_layers" not in plan:
        return f"needs compile_layers ({plan.off.get('compile_layers')})"
    if "flex_attention" not in plan:
        return f"needs packed rows of one shape ({plan.off.get('flex_attention')})"
    if getattr(train_cfg, "grad_accum", 1) > 1:
        return "train.grad_accum > 1: accumulated .grad would live in graph memory"
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return "DDP/FSDP (torchrun): one process only"
    return None


def _is_lora_linear(module: nn.Module) -> bool:
    from tunelab.kernels.lora import _is_peft_lora_linear

    try:
        return _is_peft_lora_linear(module)
    except ImportError:
        return False


def _has_layers(model: nn.Module) -> bool:
    from tunelab.kernels.regions import decoder_layers

    try:
        decoder_layers(model)
    except ValueError:
        return False
    return True


@contextmanager
def speed_context(model: nn.Module, train_cfg, device: torch.device, packed: bool = False,
                  optimizer: str | None = None, say: bool = True) -> Iterator[SpeedPlan]:
    """Apply `train_cfg.speed`'s model-changing paths for the length of the block; undo them on exit.

    Prints the plan's one `speed:` line (stderr) when `say`. Inside the block: LoRA linears are fused,
    decoder layers wrapped (checkpointed in lean mode) and compiled, and packed rows attend through
    `tunelab_varlen` (flex_attention document masks on CUDA). Every wrapper keeps the state-dict keys
    of the module it wraps, so checkpoints saved mid-run (save_every, early stopping) and resumed ones
    have PEFT's names. On exit the original modules and attention implementation come back, uncompiled.
    With `cuda_graphs` the layers compile in mode "reduce-overhead" (cudagraph trees), every decoder forward
    marks a new graph iteration (`mark_steps`), and on exit `torch.compiler.reset()` drops the captured graphs
    and their memory pool, so generation after training runs the plain layers and never replays a graph.
    """
    plan = plan_speed(model, train_cfg, device, packed, optimizer)
    if say:
        print(plan.line(), file=sys.stderr)
    fused = wrapped = 0
    old_attn = graphs_hook = grad_hook = None
    base = _unwrap_peft(model)[0] or model
    try:
        if "fused_lora" in plan:
            from tunelab.kernels.lora import fuse_lora

            fused = fuse_lora(model)
        lean = train_cfg.speed.mode == "lean"
        if "compile_layers" in plan or lean:
            from tunelab.kernels.regions import checkpoint_layers, wrap_layers

            wrapped = 1
            # fast mode: pass-through wrappers only, none checkpointed, so one compiled variant serves every layer
            if lean:
                checkpoint_layers(model, every=1)
            else:
                wrap_layers(model)
        if "flex_attention" in plan and hasattr(base, "set_attn_implementation"):
            from tunelab.kernels.varlen import register_hf_attention

            old_attn = base.config._attn_implementation
            base.set_attn_implementation(register_hf_attention())
        if "compile_layers" in plan:
            from tunelab.kernels.regions import compile_layers

            compile_layers(model, **({"mode": "reduce-overhead"} if "cuda_graphs" in plan else {}))
            grad_hook = inputs_require_grad(base)
        if "cuda_graphs" in plan:
            graphs_hook = mark_steps(model)
        yield plan
    finally:
        for hook in (graphs_hook, grad_hook):
            if hook is not None:
                hook.remove()
        if old_attn is not None:
            base.set_attn_implementation(old_attn)
        if wrapped:
            from tunelab.kernels.regions import uncheckpoint_layers

            uncheckpoint_layers(model)
        if fused:
            from tunelab.kernels.lora import unfuse_lora

            unfuse_lora(model)
        if graphs_hook is not None:  # the captured graphs and their memory pool go; nothing can replay them
            torch.compiler.reset()


def inputs_require_grad(model: nn.Module) -> torch.utils.hooks.RemovableHandle | None:
    """Make the input embeddings' output require grad while training, so the first decoder layer shares the
    others' compiled graph; the hook's handle, or None for a model without input embeddings.

    With frozen embeddings (LoRA) the first layer's input does not require grad and every later layer's does;
    the compiler guards on that and compiles the layer twice, forward and backward (a quarter of a cold
    start's compiling). The price is one layer's input gradient per step, about 1% of a step.
    """
    get = getattr(model, "get_input_embeddings", None)
    embeddings = get() if get is not None else None
    if embeddings is None:
        return None

    def require_grad(module, args, output):
        if module.training and torch.is_grad_enabled() and not output.requires_grad:
            output.requires_grad_(True)

    return embeddings.register_forward_hook(require_grad)


def mark_steps(model: nn.Module) -> torch.utils.hooks.RemovableHandle:
    """Start a new CUDA-graph iteration at every forward of the module holding the decoder layers; returns the hook.

    cudagraph trees reuse the memory of a previous iteration's outputs only once told a new one began
    (`torch.compiler.cudagraph_mark_step_begin`). One decoder forward is one iteration here: a training
    step (one micro-batch: cuda_graphs needs grad_accum 1) or an evaluation batch, whose no_grad forward
    replays its own graphs. The hook sits on the uncompiled parent of the layers, so it runs eagerly.
    It assumes one decoder forward per backward, as in SFT (the only stage using speed_context): a recipe
    running the decoder twice before one backward (chosen and rejected apart, a KL batch) would start a new
    iteration while the first forward's saved activations still wait for their backward.
    """
    layers = _layers(model)
    owner = next(m for m in model.modules() if any(child is layers for child in m.children()))
    return owner.register_forward_pre_hook(lambda module, args: torch.compiler.cudagraph_mark_step_begin())


def _layers(model: nn.Module):
    from tunelab.kernels.regions import decoder_layers

    return decoder_layers(model)
