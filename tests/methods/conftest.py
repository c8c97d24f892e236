import pytest
import torch

from tunelab.models import load_model


@pytest.fixture
def ids():
    return torch.randint(0, 49152, (2, 12), generator=torch.Generator().manual_seed(0))


def snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def one_step(model, ids, lr: float = 1e-2):
    """One AdamW step on the LM loss over the trainable parameters."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    opt.zero_grad()


def perturb(model, std: float = 0.05) -> None:
    """Move every trainable parameter away from its (often identity) initialisation."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * std)


@pytest.fixture
def tiny():
    return lambda name="tiny-llama": load_model(name)
