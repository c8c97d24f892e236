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

from tunelab.engine.loss import count_targets
from tunelab.training.common import IGNORE_INDEX, masked_mean, pick, token_logps

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


# ---------------------------------------------------------------------------------------------------------------
# The recipe (stage distill): SFT data -> student and teacher logits on the same tokens -> distill_loss -> loop.
# ---------------------------------------------------------------------------------------------------------------


def load_teacher(name: str, dtype: str, device, trust_remote_code: bool = False) -> torch.nn.Module:
    """The frozen teacher: a tunelab run folder (trained model, adapters merged) or any model name load_model takes."""
    from tunelab.bases import load_model
    from tunelab.run import Run
    from tunelab.runfolder import RunFolder

    if RunFolder(name).has_config():
        model, _, _ = Run(name).load_model(device=str(device), merged=True)
    else:
        model = load_model(name, dtype, device, trust_remote_code)
    return model.eval().requires_grad_(False)


def check_vocabularies(student, teacher, teacher_name: str) -> None:
    """Logit distillation compares distributions token by token, so the output vocabularies must match."""
    s, t = student.get_output_embeddings().weight.shape[0], teacher.get_output_embeddings().weight.shape[0]
    if s != t:
        raise ValueError(f"distill.teacher: {teacher_name} has {t} output tokens but the student has {s}; logit "
                         "distillation needs the same tokenizer. Pick a teacher of the same family, or distill "
                         "through generated data (sft on the teacher's answers)")


def distill_step(model, batch: dict, teacher, temperature: float, alpha: float, divergence: str, jsd_beta: float):
    """(token-summed loss, target tokens, metrics): ``distill_loss`` is a token mean, so x count is its sum."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    with torch.no_grad():
        teacher_logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                 use_cache=False).logits  # (B, T, V)
    loss, metrics = distill_loss(out.logits, teacher_logits, batch["labels"], temperature, alpha, divergence,
                                 jsd_beta)
    n = count_targets(batch["labels"])
    return loss * n, n, metrics


def run(cfg, progress: bool = True):
    """Distill a teacher into the student end to end and return the run folder path."""
    from functools import partial

    from tunelab.data.pipeline import collate, prepare_data
    from tunelab.engine.loop import Recipe, fit
    from tunelab.training.setup import chat_reference_data, finish_run, say, setup_run

    if cfg.distill is None:
        raise ValueError("stage distill needs a distill: section with a teacher, e.g. distill: {teacher: smollm2-135m}")
    dcfg = cfg.distill
    setup = setup_run(cfg, progress)
    teacher = load_teacher(dcfg.teacher, cfg.model.dtype, setup.device, cfg.model.trust_remote_code)
    check_vocabularies(setup.model, teacher, dcfg.teacher)
    data = prepare_data(cfg.data, setup.tokenizer, setup.template, cfg.train.seed)
    say(progress, f"distill from {dcfg.teacher} ({dcfg.divergence}, T={dcfg.temperature}, alpha={dcfg.alpha}): "
        f"{data.stats['train_samples']} train / {data.stats['val_samples']} validation samples")
    step = partial(distill_step, teacher=teacher, temperature=dcfg.temperature, alpha=dcfg.alpha,
                   divergence=dcfg.divergence, jsd_beta=dcfg.jsd_beta)
    step.perplexity = dcfg.alpha == 0  # exp(loss) is a perplexity only when the loss is the cross-entropy alone
    result = fit(setup, Recipe(train=cfg.train, optim=cfg.optim, samples=data.train, val=data.val,
                               collate=partial(collate, pad_id=setup.tokenizer.pad_token_id), loss=step,
                               reference_data=chat_reference_data(cfg, setup)), progress=progress)
    return finish_run(setup, result.summary, {**data.stats, "teacher": dcfg.teacher})
