"""Unsupervised domain adaptation of a head classifier: DANN or MMD on the pooled features the head reads.

Labelled source batches train the classifier as usual; each training step also draws a batch of unlabelled
target-domain texts and adds ``domain.weight x`` a domain loss on the pooled features ``f`` (``ScoreModel.features``):

``dann``  (Ganin et al. 2016, "Domain-Adversarial Training of Neural Networks"): a small classifier tells source
          from target features; it sits behind a gradient-reversal layer, so the classifier learns to tell them
          apart while the model below it learns features it cannot tell apart.
``mmd``   (Long et al. 2015, "Learning Transferable Features with Deep Adaptation Networks"): the squared maximum
          mean discrepancy between the source and target features under a sum of Gaussian kernels, minimized.

The domain term is only added in training; evaluation is the plain classification loss. The domain classifier
is a submodule of the model while it trains (so the optimizer updates it) and is not saved: the run is an
ordinary classify run.
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from torch import Tensor

from tunelab.data.io import DataError, read_records
from tunelab.data.pipeline import collate
from tunelab.data.templates import IGNORE_INDEX, Tokenized


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, lam: float) -> Tensor:
        ctx.lam = lam
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return -ctx.lam * grad, None


def grad_reverse(x: Tensor, lam: float = 1.0) -> Tensor:
    """Identity forward; the gradient is multiplied by ``-lam`` on the way back (DANN's GRL)."""
    return _GradReverse.apply(x, lam)


class DomainClassifier(torch.nn.Module):
    """``(N, H) -> (N,)`` logits of "target domain" (one ReLU hidden layer)."""

    def __init__(self, hidden_size: int, hidden: int, device, dtype):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(hidden_size, hidden), torch.nn.ReLU(),
                                       torch.nn.Linear(hidden, 1)).to(device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(-1)


def mmd2(x: Tensor, y: Tensor, scales: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)) -> Tensor:
    """Biased squared MMD between samples ``x (N, H)`` and ``y (M, H)`` with a sum of Gaussian kernels.

    Bandwidths are `scales` times the mean squared pairwise distance of the pooled samples (detached), so the
    kernels follow the features' scale as training moves them.
    """
    z = torch.cat([x, y])  # (N + M, H)
    d2 = torch.cdist(z, z).pow(2)  # (N + M, N + M)
    base = d2.detach().sum() / max(z.size(0) * (z.size(0) - 1), 1)
    k = sum(torch.exp(-d2 / (s * base + 1e-8)) for s in scales)
    n = x.size(0)
    return k[:n, :n].mean() + k[n:, n:].mean() - 2 * k[:n, n:].mean()


def load_target_texts(path: str) -> list[str]:
    """The texts of the unlabelled target file: ``text``, or the last user turn of ``messages``."""
    texts = []
    for rec in read_records(path):
        text = rec.data.get("text")
        if text is None and isinstance(rec.data.get("messages"), list):
            text = next((m.get("content") for m in reversed(rec.data["messages"])
                         if isinstance(m, dict) and m.get("role") == "user"), None)
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{rec.where}: domain.target records need a non-empty \"text\" (or \"messages\" with a "
                            "user turn)")
        texts.append(text)
    if not texts:
        raise DataError(f"{path}: domain.target holds no records")
    return texts


class TargetBatches:
    """Seeded draws of target-domain token sequences, collated as ``target_input_ids`` / ``target_attention_mask``."""

    def __init__(self, texts: list[str], tokenizer, max_length: int, batch_size: int, seed: int):
        self.seqs = []
        for t in texts:
            ids = tokenizer(t, add_special_tokens=True)["input_ids"][:max_length]
            self.seqs.append(Tokenized(ids, [IGNORE_INDEX] * len(ids)))
        self.batch_size, self.rng, self.pad_id = batch_size, random.Random(seed), tokenizer.pad_token_id

    def add_to(self, batch: dict) -> dict:
        drawn = collate(self.rng.sample(self.seqs, min(self.batch_size, len(self.seqs))), self.pad_id)
        return {**batch, "target_input_ids": drawn["input_ids"], "target_attention_mask": drawn["attention_mask"]}


def collate_with_target(samples: list, base_collate, target: TargetBatches) -> dict:
    """The stage's own batch plus a batch of target texts."""
    return target.add_to(base_collate(samples))


def domain_step(model, batch: dict, weights: Tensor | None, method: str, weight: float):
    """(summed classification loss + weight x domain loss x examples, examples, metrics) for a head classifier.

    ``model`` is a `tunelab.training.heads.ScoreModel` with a ``domain`` DomainClassifier (dann).
    """
    feats = model.features(batch["input_ids"], batch["attention_mask"])  # (B, H)
    logits = model.head(feats).float()  # (B, K)
    targets = batch["targets"]
    w = None if weights is None else weights.to(logits.device)
    loss = F.cross_entropy(logits, targets, weight=w, reduction="none").sum()
    n = targets.numel()
    metrics = {"accuracy": (logits.argmax(-1) == targets).float().mean().detach()}
    if not model.training or "target_input_ids" not in batch:
        return loss, n, metrics
    target = model.features(batch["target_input_ids"], batch["target_attention_mask"])  # (M, H)
    if method == "dann":
        both = grad_reverse(torch.cat([feats, target]))
        scores = model.domain(both).float()  # (B + M,)
        is_target = torch.cat([torch.zeros(len(feats)), torch.ones(len(target))]).to(scores.device)
        dloss = F.binary_cross_entropy_with_logits(scores, is_target)
        metrics["domain_acc"] = ((scores > 0).float() == is_target).float().mean().detach()
    else:
        dloss = mmd2(feats.float(), target.float())
    metrics["domain_loss"] = dloss.detach()
    return loss + weight * dloss * n, n, metrics
