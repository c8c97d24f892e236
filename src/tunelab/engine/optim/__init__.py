"""Optimizer, parameter groups, regularisers and learning-rate schedule.

Per-parameter learning rates come from three multipliers, combined into parameter groups:
the method's own (`tunelab.methods.set_lr_scale`, e.g. LoRA+), layer-wise decay
(`optim.layer_decay`) and the head / embedding multipliers (`optim.head_lr_scale`,
`optim.embed_lr_scale`). Optimizers are a registry of small builders, one module per family:
`adamw`, `bnb` (8-bit AdamW from bitsandbytes), `adafactor`, `galore`, `badam`. Regularisers
(EWC) live in `tunelab.engine.regularise`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from tunelab.config.optim import OptimCfg
from tunelab.engine import regularise
from tunelab.engine.optim import adafactor, adamw, badam, bnb, galore
from tunelab.methods import decoder_layers, head_and_embedding_ids, layer_index, lr_scale


def lr_multipliers(model, optim: OptimCfg | None) -> Callable[[str, torch.nn.Parameter], float]:
    """f(name, param) -> learning-rate multiplier: method scale x layer-wise decay x head/embedding scale.

    Layer-wise decay (Clark et al. 2020, ELECTRA; Howard & Ruder 2018): with L decoder layers, layer i
    (0-based) trains at decay^(L - i), the embeddings at decay^(L + 1), the head and final norm at 1.
    """
    if optim is None or (optim.layer_decay is None and optim.head_lr_scale == 1 and optim.embed_lr_scale == 1):
        return lambda name, p: lr_scale(p)
    head, emb = head_and_embedding_ids(model)
    try:
        layers_name, layers = decoder_layers(model)
    except ValueError:
        layers_name, layers = "", []
    n_layers, decay = len(layers), optim.layer_decay or 1.0

    def f(name: str, p: torch.nn.Parameter) -> float:
        i = layer_index(name, layers_name) if layers_name else None
        if id(p) in emb:
            depth_scale = decay ** (n_layers + 1) * optim.embed_lr_scale
            if id(p) in head:  # tied embeddings / head: the head's rate wins
                depth_scale = optim.head_lr_scale
        elif id(p) in head:
            depth_scale = optim.head_lr_scale
        elif i is not None:
            depth_scale = decay ** (n_layers - i)
        else:
            depth_scale = 1.0
        return lr_scale(p) * depth_scale

    return f


def param_groups(model, weight_decay: float, multiplier: Callable | None = None) -> list[dict]:
    """AdamW groups: matrices decay, norms/biases/1-d tensors do not (as nanoGPT and most LLM recipes);
    split further by learning-rate multiplier. Each group carries "lr_scale"; the x1 groups come first."""
    multiplier = multiplier or (lambda name, p: lr_scale(p))
    groups: dict[tuple[bool, float], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decays = p.dim() >= 2 and "norm" not in name.lower()
        groups.setdefault((decays, multiplier(name, p)), []).append(p)
    ordered = sorted(groups.items(), key=lambda kv: (kv[0][1] != 1.0, not kv[0][0], -kv[0][1]))
    return [{"params": ps, "weight_decay": weight_decay if decays else 0.0, "lr_scale": scale}
            for (decays, scale), ps in ordered]


# name -> build(groups, lr, optim, device, model); one module per optimizer family
OPTIMIZERS: dict[str, Callable] = {
    "adamw": adamw.build,
    "adamw_8bit": bnb.adamw_8bit(paged=False),
    "paged_adamw_8bit": bnb.adamw_8bit(paged=True),
    "adafactor": adafactor.build,
    "galore_adamw": galore.build,
    "badam": badam.build,
}


def build_optimizer(model, lr: float, weight_decay: float, device: torch.device,
                    optim: OptimCfg | None = None) -> torch.optim.Optimizer:
    """The configured optimizer over the trainable parameters; each group's lr is lr x its multiplier."""
    optim = optim or OptimCfg()
    groups = param_groups(model, weight_decay, lr_multipliers(model, optim))
    if not groups:
        raise ValueError("the method left no parameter trainable; check method.name and its options")
    for g in groups:
        g["lr"] = lr * g["lr_scale"]
    return OPTIMIZERS[resolve_name(optim.name, model, device)](groups, lr, optim, device, model)


def resolve_name(name: str, model, device: torch.device) -> str:
    """`auto` -> paged 8-bit AdamW for a 4-bit quantized base on CUDA (the QLoRA recipe), else AdamW."""
    if name != "auto":
        return name
    quantized = any(getattr(m, "tunelab_quantized", None) for m in model.modules())
    return "paged_adamw_8bit" if quantized and device.type == "cuda" else "adamw"


def build_regulariser(optim: OptimCfg, model, run_dir: Path, train_samples, collate_fn, loss_fn, device, seed: int,
                      reference_data: Callable[[str], Sequence] | None = None):
    """An object with .penalty() -> scalar tensor added to each step's loss, or None (only EWC so far).

    `reference_data(path)` is the stage's own loader (its samples for a data file), used for optim.ewc.data.
    """
    if optim.ewc is None or optim.ewc.lambda_ == 0:
        return None
    return regularise.build_ewc(optim.ewc, model, run_dir, train_samples, collate_fn, loss_fn, device, seed,
                                reference_data)


def lr_lambda(kind: str, total_steps: int, warmup_steps: int):
    """Multiplier of the peak LR at a step: linear warmup, then cosine/linear decay to 0 or constant."""

    def f(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if kind == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        progress = min(max(progress, 0.0), 1.0)
        if kind == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


def build_scheduler(optimizer, kind: str, total_steps: int, warmup_ratio: float):
    """A LambdaLR implementing warmup + decay; its state is saved in checkpoints."""
    warmup = round(total_steps * warmup_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(kind, total_steps, warmup))
