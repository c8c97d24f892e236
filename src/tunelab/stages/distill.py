"""Knowledge distillation on logits: a divergence to the teacher's softened distribution plus hard-label CE.

Hinton et al. 2015: soften both distributions with temperature ``T``, match them, and multiply by ``T^2`` so
the gradient scale does not shrink as ``T`` grows; mix with the ordinary cross-entropy on the labels:

    loss = alpha * T^2 * D(student_T, teacher_T) + (1 - alpha) * CE(student, labels)

``D`` is picked from ``DIVERGENCES``:
    ``forward``  KL(teacher || student): mode-covering, the classic KD objective
    ``reverse``  KL(student || teacher): mode-seeking (MiniLLM, Gu et al. 2024)
    ``jsd``      generalized Jensen-Shannon with weight ``beta`` (GKD, Agarwal et al. 2024, Eq. 1):
                 ``beta KL(teacher || M) + (1 - beta) KL(student || M)``, ``M = beta teacher + (1 - beta) student``

Per-token divergences (summed over the vocabulary) are averaged over the target tokens marked by ``labels``.
Logits and labels follow the stage convention: labels aligned with inputs, ``-100`` where not a target,
the one-token shift done here.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from tunelab.stages.common import IGNORE_INDEX, masked_mean, pick, token_logps

Divergence = Callable[[Tensor, Tensor, float], Tensor]


def forward_kl(student_logps: Tensor, teacher_logps: Tensor, beta: float = 0.5) -> Tensor:
    """KL(teacher || student) per position; ``(..., V), (..., V) -> (...)``. ``beta`` is unused."""
    return F.kl_div(student_logps, teacher_logps, reduction="none", log_target=True).sum(-1)


def reverse_kl(student_logps: Tensor, teacher_logps: Tensor, beta: float = 0.5) -> Tensor:
    """KL(student || teacher) per position; ``(..., V), (..., V) -> (...)``. ``beta`` is unused."""
    return F.kl_div(teacher_logps, student_logps, reduction="none", log_target=True).sum(-1)


def generalized_jsd(student_logps: Tensor, teacher_logps: Tensor, beta: float = 0.5) -> Tensor:
    """Generalized JSD (GKD, Eq. 1) per position with mixture ``M = beta teacher + (1 - beta) student``.

    ``beta`` must lie strictly in (0, 1); ``beta = 0.5`` is the symmetric Jensen-Shannon divergence.
    """
    if not 0.0 < beta < 1.0:
        raise ValueError(f"jsd beta must be in (0, 1), got {beta}; use divergence 'forward' or 'reverse' instead")
    mixture = torch.logsumexp(
        torch.stack([student_logps + math.log1p(-beta), teacher_logps + math.log(beta)]), dim=0
    )  # (..., V) log M
    to_teacher = F.kl_div(mixture, teacher_logps, reduction="none", log_target=True).sum(-1)  # KL(teacher || M)
    to_student = F.kl_div(mixture, student_logps, reduction="none", log_target=True).sum(-1)  # KL(student || M)
    return beta * to_teacher + (1 - beta) * to_student


DIVERGENCES: dict[str, Divergence] = {"forward": forward_kl, "reverse": reverse_kl, "jsd": generalized_jsd}


def distill_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    temperature: float = 2.0,
    alpha: float = 0.5,
    divergence: str = "forward",
    jsd_beta: float = 0.5,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Distillation loss ``alpha * T^2 * D + (1 - alpha) * CE`` over the target tokens.

    Args:
        student_logits: ``(B, T, V)`` with grad.
        teacher_logits: ``(B, T, V)`` same tokenizer and positions; treated as a constant.
        labels: ``(B, T)`` aligned with the inputs, ``-100`` where not a target.
        temperature: softening temperature ``T`` > 0 (both distributions); CE uses the raw logits.
        alpha: weight of the distillation term in [0, 1]; ``1`` is pure distillation.
        divergence: ``forward``, ``reverse`` or ``jsd``.
        jsd_beta: mixture weight for ``jsd``.

    Returns:
        ``(loss, metrics)``; metrics ``divergence`` (token-mean D at temperature T, before the ``T^2`` factor)
        and ``ce`` (token-mean hard-label cross-entropy), both detached.
    """
    divergence_fn = pick(DIVERGENCES, divergence, "distillation divergence")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ; "
            "distillation on logits needs the same tokenizer (vocabulary) and the same token positions"
        )
    if temperature <= 0 or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"need temperature > 0 and 0 <= alpha <= 1, got temperature={temperature}, alpha={alpha}")
    mask = labels[:, 1:] != IGNORE_INDEX  # (B, T-1)
    student = F.log_softmax(student_logits[:, :-1].float() / temperature, dim=-1)  # (B, T-1, V)
    teacher = F.log_softmax(teacher_logits[:, :-1].detach().float() / temperature, dim=-1)
    div = masked_mean(divergence_fn(student, teacher, jsd_beta), mask)  # ()
    logps, _ = token_logps(student_logits, labels)  # (B, T-1)
    ce = -masked_mean(logps, mask)
    loss = alpha * temperature**2 * div + (1 - alpha) * ce
    return loss, {"divergence": div.detach(), "ce": ce.detach()}
