"""BAdam (Luo et al. 2024, arXiv:2404.02827): block-coordinate Adam, one decoder layer at a time.

The trainable parameters are split into blocks (one per decoder layer, plus one for everything
outside the layers). Only the active block is updated, with Adam moments that exist for that block
alone; every `switch_interval` steps the next block (ascending, descending or random order) takes
over and the previous block's moments are dropped. Optimizer memory is therefore that of one layer.
Gradients are still computed for every trainable weight (so clipping sees the global norm).
"""

from __future__ import annotations

import random

import torch

from tunelab.methods import decoder_layers, layer_index

ORDERS = {
    "ascending": lambda n, cycle, seed: list(range(n)),
    "descending": lambda n, cycle, seed: list(range(n))[::-1],
    "random": lambda n, cycle, seed: random.Random(seed + cycle).sample(range(n), n),
}


class BlockAdam(torch.optim.Optimizer):
    """Adam on the active block only. Each param group is one block; group["lr"] follows the schedule."""

    def __init__(self, blocks: list[dict], lr: float, betas=(0.9, 0.999), eps: float = 1e-8,
                 switch_mode: str = "ascending", switch_interval: int = 50, seed: int = 0):
        super().__init__(blocks, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": 0.0})
        self.switch_mode, self.switch_interval, self.seed = switch_mode, switch_interval, seed
        # the schedule position lives in the first group so optimizer.state_dict() saves it
        self.param_groups[0].setdefault("badam_step", 0)

    def active_block(self) -> int:
        """Index of the param group being updated at the current step."""
        n = len(self.param_groups)
        turn = self.param_groups[0]["badam_step"] // self.switch_interval
        cycle, k = divmod(turn, n)
        return ORDERS[self.switch_mode](n, cycle, self.seed)[k]

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        group = self.param_groups[self.active_block()]
        beta1, beta2 = group["betas"]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                state.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
            state["step"] += 1
            t = state["step"]
            state["exp_avg"].mul_(beta1).add_(p.grad, alpha=1 - beta1)
            state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
            denom = (state["exp_avg_sq"] / (1 - beta2 ** t)).sqrt_().add_(group["eps"])
            p.addcdiv_(state["exp_avg"], denom, value=-group["lr"] / (1 - beta1 ** t))
        before = self.active_block()
        self.param_groups[0]["badam_step"] += 1
        if self.active_block() != before:  # switching: the finished block's moments are dropped
            for p in group["params"]:
                self.state.pop(p, None)
        return loss


def blocks(model, named_params: list[tuple[str, torch.nn.Parameter]]) -> list[list[torch.nn.Parameter]]:
    """Trainable parameters split per decoder layer, plus one block for the rest (embeddings, head, norm)."""
    layers_name, layers = decoder_layers(model)
    per_layer: list[list] = [[] for _ in layers]
    rest: list = []
    for name, p in named_params:
        i = layer_index(name, layers_name)
        (per_layer[i] if i is not None else rest).append(p)
    return [b for b in per_layer + [rest] if b]


def build(groups: list[dict], lr: float, optim, device: torch.device, model) -> torch.optim.Optimizer:
    """BlockAdam over one block per decoder layer (plus the rest), switching as optim.badam says.

    The blocks replace the parameter groups, so per-group learning rates cannot be kept: they are refused.
    """
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if any(g["lr_scale"] != 1.0 for g in groups):
        raise ValueError("optim.name=badam: per-group learning rates (layer_decay, head_lr_scale, LoRA+) are not "
                         "supported with block-coordinate updates; unset them")
    return BlockAdam([{"params": b} for b in blocks(model, trainable)], lr=lr, betas=optim.betas, eps=optim.eps,
                     switch_mode=optim.badam.switch_mode, switch_interval=optim.badam.switch_interval)
