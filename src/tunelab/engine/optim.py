"""Optimizer, parameter groups, regularisers and learning-rate schedule.

Per-parameter learning rates come from three multipliers, combined into parameter groups:
the method's own (`tunelab.methods.set_lr_scale`, e.g. LoRA+), layer-wise decay
(`optim.layer_decay`) and the head / embedding multipliers (`optim.head_lr_scale`,
`optim.embed_lr_scale`). Optimizers are a registry of small builders.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch

from tunelab.config.optim import OptimCfg
from tunelab.methods import (
    decoder_layers,
    head_and_embedding_ids,
    import_bitsandbytes,
    layer_index,
    lr_scale,
)


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


def _adamw(groups, lr, optim, device, model):
    return torch.optim.AdamW(groups, lr=lr, betas=optim.betas, eps=optim.eps, fused=device.type == "cuda")


def _bnb_adamw(paged: bool):
    def build(groups, lr, optim, device, model):
        bnb = import_bitsandbytes(f"optim.name={optim.name}")
        cls = bnb.optim.PagedAdamW8bit if paged else bnb.optim.AdamW8bit
        return cls(groups, lr=lr, betas=optim.betas, eps=optim.eps)
    return build


def _adafactor(groups, lr, optim, device, model):
    from transformers.optimization import Adafactor

    # an explicit lr (the schedule is ours), no relative step / warmup init
    return Adafactor(groups, lr=lr, scale_parameter=False, relative_step=False, warmup_init=False)


def _galore(groups, lr, optim, device, model):
    from tunelab.methods.galore import GaLoreAdamW

    g = optim.galore
    names = {id(p): n for n, p in model.named_parameters()}
    head, emb = head_and_embedding_ids(model)
    out = []
    for group in groups:
        projected = [p for p in group["params"] if p.dim() == 2 and id(p) not in head | emb
                     and any(t in names[id(p)] for t in g.target_modules)]
        chosen = {id(p) for p in projected}
        rest = [p for p in group["params"] if id(p) not in chosen]
        if projected:
            out.append({**group, "params": projected, "rank": g.rank, "update_proj_gap": g.update_interval,
                        "scale": g.scale})
        if rest:
            out.append({**group, "params": rest})
    return GaLoreAdamW(out, lr=lr, betas=optim.betas, eps=optim.eps)


def _badam(groups, lr, optim, device, model):
    from tunelab.methods.badam import BlockAdam, blocks

    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if any(g["lr_scale"] != 1.0 for g in groups):
        raise ValueError("optim.name=badam: per-group learning rates (layer_decay, head_lr_scale, LoRA+) are not "
                         "supported with block-coordinate updates; unset them")
    return BlockAdam([{"params": b} for b in blocks(model, trainable)], lr=lr, betas=optim.betas, eps=optim.eps,
                     switch_mode=optim.badam.switch_mode, switch_interval=optim.badam.switch_interval)


OPTIMIZERS: dict[str, Callable] = {
    "adamw": _adamw,
    "adamw_8bit": _bnb_adamw(paged=False),
    "paged_adamw_8bit": _bnb_adamw(paged=True),
    "adafactor": _adafactor,
    "galore_adamw": _galore,
    "badam": _badam,
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


def resolve_optim(optim: OptimCfg | None, run_dir: Path) -> OptimCfg:
    """The stage's optim section, else the one stored in the run folder's config.yaml, else defaults."""
    if optim is not None:
        return optim
    path = Path(run_dir) / "config.yaml"
    if path.is_file():
        import yaml

        stored = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("optim")
        if stored:
            return OptimCfg.model_validate(stored)
    return OptimCfg()


def build_regulariser(optim: OptimCfg, model, run_dir: Path, train_samples, collate_fn, loss_fn, device, seed: int):
    """An object with .penalty() -> scalar tensor added to each step's loss, or None (only EWC so far)."""
    if optim.ewc is None or optim.ewc.lambda_ == 0:
        return None
    from tunelab.methods.ewc import build_ewc

    return build_ewc(optim.ewc, model, run_dir, train_samples, collate_fn, loss_fn, device, seed)


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
