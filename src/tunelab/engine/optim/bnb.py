"""8-bit AdamW from bitsandbytes (Dettmers et al. 2022, arXiv:2110.02861), plain or paged.

bitsandbytes is imported only when one of these optimizers is built (through
`tunelab.methods.import_bitsandbytes`, which qlora shares), so plain runs never load it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from tunelab.methods import import_bitsandbytes


def adamw_8bit(paged: bool) -> Callable[..., torch.optim.Optimizer]:
    """A builder for bitsandbytes' AdamW8bit, or PagedAdamW8bit (states paged to CPU under memory pressure)."""
    def build(groups, lr, optim, device, model):
        bnb = import_bitsandbytes(f"optim.name={optim.name}")
        cls = bnb.optim.PagedAdamW8bit if paged else bnb.optim.AdamW8bit
        return cls(groups, lr=lr, betas=optim.betas, eps=optim.eps)
    return build
