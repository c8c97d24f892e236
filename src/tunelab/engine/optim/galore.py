"""GaLore (Zhao et al. 2024, arXiv:2403.03507): Adam moments kept in a low-rank projection of the gradient.

For a weight W (m x n) with gradient G, every `update_interval` steps the projection is recomputed
from G's SVD: P = U[:, :r] (left, when m < n) or Q = Vh[:r] (right, when m >= n). In between,
    R = P^T G (r x n)  or  G Q^T (m x r)          # low-rank gradient
    Adam moments on R -> N = m_hat / (sqrt(v_hat) + eps)
    W <- W - lr * scale * (P N  or  N Q)  - lr * wd * W
so the optimizer state of W is r/min(m, n) of AdamW's. Parameter groups carrying a `rank` key are
projected; other groups get plain AdamW. (Same group keys as the galore-torch package.)
"""

from __future__ import annotations

import torch

from tunelab.methods import head_and_embedding_ids


class GaLoreAdamW(torch.optim.Optimizer):
    """AdamW with GaLore projection for groups that have `rank`, `update_proj_gap` and `scale` keys."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    @staticmethod
    def project(grad: torch.Tensor, rank: int) -> tuple[str, torch.Tensor]:
        """(side, matrix) of the rank-r projection of a 2-d gradient (left if m < n, else right)."""
        u, _, vh = torch.linalg.svd(grad.float(), full_matrices=False)
        return ("left", u[:, :rank]) if grad.shape[0] < grad.shape[1] else ("right", vh[:rank])

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                state = self.state[p]
                state["step"] = state.get("step", 0) + 1
                t = state["step"]
                if "rank" in group and p.dim() == 2:
                    if (t - 1) % group["update_proj_gap"] == 0:
                        side, proj = self.project(g, group["rank"])
                        state["proj"], state["left"] = proj, side == "left"
                    proj = state["proj"]
                    g = proj.T @ g if state["left"] else g @ proj.T  # (r, n) or (m, r)
                if "exp_avg" not in state:
                    state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(g), torch.zeros_like(g)
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(beta1).add_(g, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                update = (m / (1 - beta1 ** t)) / ((v / (1 - beta2 ** t)).sqrt() + group["eps"])
                if "rank" in group and p.dim() == 2:
                    proj = state["proj"]
                    update = (proj @ update if state["left"] else update @ proj) * group["scale"]  # (m, n)
                if group["weight_decay"]:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update.to(p.dtype), alpha=-group["lr"])
        return loss


def build(groups: list[dict], lr: float, optim, device: torch.device, model) -> torch.optim.Optimizer:
    """GaLoreAdamW: each group's 2-d weights named by optim.galore.target_modules (never the head or embeddings)
    get a projected group of their own; everything else keeps plain AdamW in a group beside it."""
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
