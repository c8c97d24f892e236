"""Preference optimization: DPO (sigmoid / IPO / hinge), ORPO, SimPO and KTO losses.

Every loss here takes per-sequence log-probabilities (see ``tunelab.training.common.sequence_logps``) and
returns ``(loss, metrics)``. They are collected in ``PREFERENCE_LOSSES`` so a recipe picks one by name:

    loss, metrics = PREFERENCE_LOSSES["sigmoid"](logps, PreferenceParams(beta=0.1))

Logged metrics (scalars, detached):
    rewards/chosen, rewards/rejected   mean implicit reward of the chosen / rejected completions
    rewards/margins                    mean (chosen - rejected) reward
    rewards/accuracies                 share of pairs whose chosen reward is higher (paired losses only)
    logps/chosen, logps/rejected       mean policy log-prob (summed over tokens, or averaged where the loss is)

The implicit reward is what each method's objective ranks: ``beta * (log pi - log pi_ref)`` for DPO and
KTO, ``beta * mean token log pi`` for SimPO and ORPO (which need no reference model).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

from tunelab.config.speed import SpeedCfg
from tunelab.data.pipeline import collate
from tunelab.data.stage_formats import load_kto, load_preference
from tunelab.data.templates import Tokenized, split_prompt_answer
from tunelab.data.tokenize import encode, join_truncated
from tunelab.engine.loop import LOSS_COUNT_KEY, Recipe, fit
from tunelab.kernels.linear_logps import linear_sequence_logps
from tunelab.kernels.train import lm_parts, note_once
from tunelab.training.common import check_same_shape, pick, sequence_logps, target_counts
from tunelab.training.setup import finish_run, load_split, say, setup_run
from tunelab.training.reference import Reference
from tunelab.training.pairs import collate_pairs, pair_samples

Metrics = dict[str, Tensor]


@dataclass(frozen=True)
class PreferenceLogps:
    """Per-sequence log-probs for one batch. Chosen tensors are ``(Bc,)``, rejected ``(Br,)``.

    Paired losses (DPO, IPO, hinge, ORPO, SimPO) need ``Bc == Br`` with row ``i`` of each forming a pair.
    KTO is unpaired: ``chosen`` are the desirable completions, ``rejected`` the undesirable ones, in any number.
    """

    chosen: Tensor
    """Summed log pi(y | x) over the chosen completion's tokens."""
    rejected: Tensor
    """Summed log pi(y | x) over the rejected completion's tokens."""
    chosen_tokens: Tensor | None = None
    """Completion token counts; needed by the length-normalized losses (IPO, ORPO, SimPO)."""
    rejected_tokens: Tensor | None = None
    ref_chosen: Tensor | None = None
    """Same sums under the frozen reference model; needed by DPO, IPO, hinge and KTO."""
    ref_rejected: Tensor | None = None
    kl: Tensor | None = None
    """KTO only, ``(Bk,)``: policy log-probs of mismatched (prompt, completion) pairs for the KL baseline."""
    ref_kl: Tensor | None = None
    """KTO only, ``(Bk,)``: reference log-probs of the same mismatched pairs."""


@dataclass(frozen=True)
class PreferenceParams:
    """Hyper-parameters read by the preference losses; each loss documents the ones it uses."""

    beta: float = 0.1
    """Inverse temperature: DPO/hinge/KTO beta, IPO tau, ORPO lambda, SimPO beta (paper default 2.0)."""
    label_smoothing: float = 0.0
    """Probability that a pair's label is flipped (conservative DPO, sigmoid and SimPO); 0 disables it."""
    gamma: float = 0.5
    """SimPO target reward margin (TRL's ``simpo_gamma``)."""
    desirable_weight: float = 1.0
    """KTO weight on desirable examples' losses."""
    undesirable_weight: float = 1.0
    """KTO weight on undesirable examples' losses."""
    sft_weight: float = 0.0
    """DPO losses (sigmoid, ipo, hinge): weight of the chosen answers' token-mean NLL added to the loss (RPO)."""


PreferenceLoss = Callable[[PreferenceLogps, PreferenceParams], tuple[Tensor, Metrics]]


def _require(logps: PreferenceLogps, loss: str, *fields: str) -> list[Tensor]:
    """Return the named fields, raising a ValueError that names the loss and each missing field."""
    missing = [name for name in fields if getattr(logps, name) is None]
    if missing:
        raise ValueError(
            f"preference loss {loss!r} needs PreferenceLogps.{', .'.join(missing)}; "
            "compute them with sequence_logps / target_counts (reference ones under the frozen reference model)"
        )
    return [getattr(logps, name) for name in fields]


def _paired(logps: PreferenceLogps, loss: str, *fields: str) -> list[Tensor]:
    """Like ``_require`` but also checks every tensor has the chosen tensor's (B,) shape."""
    tensors = _require(logps, loss, "chosen", "rejected", *fields)
    check_same_shape(**dict(zip(("chosen", "rejected", *fields), tensors)))
    return tensors


def _reward_metrics(chosen_rewards: Tensor, rejected_rewards: Tensor, chosen: Tensor, rejected: Tensor) -> Metrics:
    """Mean rewards, margin and pair accuracy for paired losses; every value detached, shape ()."""
    chosen_rewards, rejected_rewards = chosen_rewards.detach(), rejected_rewards.detach()
    return {
        "rewards/chosen": chosen_rewards.mean(),
        "rewards/rejected": rejected_rewards.mean(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean(),
        "logps/chosen": chosen.detach().mean(),
        "logps/rejected": rejected.detach().mean(),
    }


def _logratios(logps: PreferenceLogps, loss: str) -> tuple[Tensor, Tensor]:
    """``log pi/pi_ref`` of chosen and rejected, each ``(B,)``."""
    chosen, rejected, ref_chosen, ref_rejected = _paired(logps, loss, "ref_chosen", "ref_rejected")
    return chosen - ref_chosen, rejected - ref_rejected


def _dpo_metrics(logps: PreferenceLogps, params: PreferenceParams, chosen_lr: Tensor, rejected_lr: Tensor) -> Metrics:
    """Reward metrics with DPO's implicit reward ``beta * log pi/pi_ref``."""
    return _reward_metrics(params.beta * chosen_lr, params.beta * rejected_lr, logps.chosen, logps.rejected)


def dpo_sigmoid_loss(logps: PreferenceLogps, params: PreferenceParams) -> tuple[Tensor, Metrics]:
    """DPO (Rafailov et al. 2023, Eq. 7): ``-log sigmoid(beta * (log-ratio_chosen - log-ratio_rejected))``.

    With ``label_smoothing = eps`` > 0 this is conservative DPO (cDPO): the pair's label is assumed flipped
    with probability eps, ``-(1 - eps) log s(beta d) - eps log s(-beta d)``.
    Reads ``beta``, ``label_smoothing``; needs reference log-probs.
    """
    chosen_lr, rejected_lr = _logratios(logps, "sigmoid")  # (B,) each
    logits = params.beta * (chosen_lr - rejected_lr)  # (B,)
    eps = params.label_smoothing
    losses = -(1 - eps) * F.logsigmoid(logits) - eps * F.logsigmoid(-logits)
    return losses.mean(), _dpo_metrics(logps, params, chosen_lr, rejected_lr)


def dpo_hinge_loss(logps: PreferenceLogps, params: PreferenceParams) -> tuple[Tensor, Metrics]:
    """Hinge DPO (SLiC-HF, Zhao et al. 2023, as in TRL's ``hinge``): ``relu(1 - beta * (lr_chosen - lr_rejected))``.

    Reads ``beta`` (``1/beta`` is the margin in log-ratio units); needs reference log-probs.
    """
    chosen_lr, rejected_lr = _logratios(logps, "hinge")
    losses = torch.relu(1 - params.beta * (chosen_lr - rejected_lr))
    return losses.mean(), _dpo_metrics(logps, params, chosen_lr, rejected_lr)


def ipo_loss(logps: PreferenceLogps, params: PreferenceParams) -> tuple[Tensor, Metrics]:
    """IPO (Azar et al. 2023, Eq. 17): ``(h - 1 / (2 tau))^2`` with ``tau = beta``.

    ``h`` is the difference of *per-token averaged* log-ratios, ``lr_chosen / n_chosen - lr_rejected / n_rejected``:
    the summed form makes the squared loss grow with length, and the averaged form is what the paper's
    results use (TRL's ``ipo`` does the same). Regresses the margin to a fixed target instead of pushing it
    to infinity, so it does not overfit deterministic preferences. Needs reference log-probs and token counts.
    """
    chosen_lr, rejected_lr = _logratios(logps, "ipo")
    _, _, n_chosen, n_rejected = _paired(logps, "ipo", "chosen_tokens", "rejected_tokens")
    h = chosen_lr / n_chosen.clamp(min=1) - rejected_lr / n_rejected.clamp(min=1)  # (B,)
    losses = (h - 1 / (2 * params.beta)) ** 2
    return losses.mean(), _dpo_metrics(logps, params, chosen_lr, rejected_lr)


def _log1mexp(x: Tensor) -> Tensor:
    """``log(1 - exp(x))`` for ``x < 0``, switching formula at ``-ln 2`` to avoid cancellation (Maechler 2012)."""
    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def orpo_loss(logps: PreferenceLogps, params: PreferenceParams) -> tuple[Tensor, Metrics]:
    """ORPO (Hong et al. 2024, Eqs. 4-7): ``NLL(chosen) - lambda * mean log sigmoid(log odds-ratio)``.

    ``log odds(y) = log p - log(1 - p)`` with ``p`` the per-token *averaged* probability of the completion,
    and the odds ratio compares chosen to rejected. The NLL term is the token-mean cross-entropy of the
    chosen completions over the whole batch (sum of log-probs / number of tokens). No reference model:
    SFT and preference alignment in one loss. ``lambda = beta``. Needs token counts.
    """
    chosen, rejected, n_chosen, n_rejected = _paired(logps, "orpo", "chosen_tokens", "rejected_tokens")
    avg_chosen = chosen / n_chosen.clamp(min=1)  # (B,) mean token log-prob, < 0
    avg_rejected = rejected / n_rejected.clamp(min=1)
    log_odds = (avg_chosen - avg_rejected) - (_log1mexp(avg_chosen) - _log1mexp(avg_rejected))  # (B,)
    ratio = F.logsigmoid(log_odds)  # (B,)
    nll = -chosen.sum() / n_chosen.sum().clamp(min=1)  # ()
    loss = nll - params.beta * ratio.mean()
    metrics = _reward_metrics(params.beta * avg_chosen, params.beta * avg_rejected, avg_chosen, avg_rejected)
    metrics.update({"nll_loss": nll.detach(), "log_odds_ratio": ratio.detach().mean(),
                    "log_odds_chosen": log_odds.detach().mean()})
    return loss, metrics


def simpo_loss(logps: PreferenceLogps, params: PreferenceParams) -> tuple[Tensor, Metrics]:
    """SimPO (Meng et al. 2024, Eq. 6): ``-log sigmoid(beta * (avg_chosen - avg_rejected) - gamma)``.

    ``avg`` is the per-token averaged log-prob (length-normalized reward, no reference model); ``gamma``
    is the target reward margin. ``label_smoothing`` as in cDPO. Reads ``beta`` (paper: 2.0-2.5),
    ``gamma``, ``label_smoothing``; needs token counts.
    """
    chosen, rejected, n_chosen, n_rejected = _paired(logps, "simpo", "chosen_tokens", "rejected_tokens")
    avg_chosen = chosen / n_chosen.clamp(min=1)  # (B,)
    avg_rejected = rejected / n_rejected.clamp(min=1)
    logits = params.beta * (avg_chosen - avg_rejected) - params.gamma  # (B,)
    eps = params.label_smoothing
    losses = -(1 - eps) * F.logsigmoid(logits) - eps * F.logsigmoid(-logits)
    rewards = _reward_metrics(params.beta * avg_chosen, params.beta * avg_rejected, avg_chosen, avg_rejected)
    return losses.mean(), rewards


def kto_loss(logps: PreferenceLogps, params: PreferenceParams) -> tuple[Tensor, Metrics]:
    """KTO (Ethayarajh et al. 2024, Eq. 7) on unpaired desirable (``chosen``) / undesirable (``rejected``) examples.

    ``z0 = max(0, mean(kl - ref_kl))`` estimates KL(pi || pi_ref) from mismatched (prompt, completion) pairs
    of the batch and is a baseline, not differentiated. Desirable loss ``1 - s(beta (r - z0))``, undesirable
    loss ``1 - s(beta (z0 - r))`` with ``r = log pi/pi_ref``; each weighted (``desirable_weight`` /
    ``undesirable_weight``, chosen so ``w_d n_d / (w_u n_u)`` is in [1, 4/3]) and averaged over all examples.
    Without ``kl``/``ref_kl``, ``z0 = 0``. Extra metric ``kl``: the z0 estimate.
    """
    chosen, rejected, ref_chosen, ref_rejected = _require(logps, "kto", "chosen", "rejected", "ref_chosen",
                                                          "ref_rejected")
    check_same_shape(chosen=chosen, ref_chosen=ref_chosen)
    check_same_shape(rejected=rejected, ref_rejected=ref_rejected)
    if chosen.numel() + rejected.numel() == 0:
        raise ValueError("preference loss 'kto' got an empty batch (no desirable and no undesirable examples)")
    if (logps.kl is None) != (logps.ref_kl is None):
        raise ValueError("preference loss 'kto' needs both PreferenceLogps.kl and .ref_kl, or neither")
    if logps.kl is None:
        z0 = chosen.new_zeros(())
    else:
        check_same_shape(kl=logps.kl, ref_kl=logps.ref_kl)
        z0 = (logps.kl - logps.ref_kl).mean().detach().clamp(min=0)  # ()
    chosen_lr = chosen - ref_chosen  # (Bc,)
    rejected_lr = rejected - ref_rejected  # (Br,)
    chosen_losses = 1 - torch.sigmoid(params.beta * (chosen_lr - z0))
    rejected_losses = 1 - torch.sigmoid(params.beta * (z0 - rejected_lr))
    losses = torch.cat([params.desirable_weight * chosen_losses, params.undesirable_weight * rejected_losses])
    chosen_rewards, rejected_rewards = params.beta * chosen_lr.detach(), params.beta * rejected_lr.detach()
    metrics: Metrics = {"kl": z0}
    if chosen.numel():
        metrics["rewards/chosen"] = chosen_rewards.mean()
        metrics["logps/chosen"] = chosen.detach().mean()
    if rejected.numel():
        metrics["rewards/rejected"] = rejected_rewards.mean()
        metrics["logps/rejected"] = rejected.detach().mean()
    if chosen.numel() and rejected.numel():
        metrics["rewards/margins"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
    return losses.mean(), metrics


PREFERENCE_LOSSES: dict[str, PreferenceLoss] = {
    "sigmoid": dpo_sigmoid_loss,
    "ipo": ipo_loss,
    "hinge": dpo_hinge_loss,
    "orpo": orpo_loss,
    "simpo": simpo_loss,
    "kto": kto_loss,
}
"""Preference losses by name. ``sigmoid``, ``ipo`` and ``hinge`` are DPO's loss types (reference model needed);
``orpo`` and ``simpo`` are reference-free; ``kto`` takes unpaired desirable/undesirable examples."""

REFERENCE_FREE = frozenset({"orpo", "simpo"})
"""Losses that do not read reference-model log-probs (a recipe can skip the reference forward pass)."""


SFT_TERM_LOSSES = frozenset({"sigmoid", "ipo", "hinge"})
"""Losses that take ``PreferenceParams.sft_weight`` (ORPO has its own NLL term; SimPO and KTO take none)."""


def preference_loss(name: str, logps: PreferenceLogps, params: PreferenceParams) -> tuple[Tensor, Metrics]:
    """Run the loss registered as ``name``; an unknown name raises a ValueError listing the choices.

    With ``params.sft_weight`` > 0 a DPO loss also gets ``sft_weight * NLL(chosen)``, the token-mean negative
    log-likelihood of the chosen answers over the batch (RPO; TRL's ``loss_type=[name, "sft"]``).
    """
    loss, metrics = pick(PREFERENCE_LOSSES, name, "preference loss")(logps, params)
    if params.sft_weight and name in SFT_TERM_LOSSES:
        chosen, n_chosen = _require(logps, name, "chosen", "chosen_tokens")
        nll = -chosen.sum() / n_chosen.sum().clamp(min=1)
        loss = loss + params.sft_weight * nll
        metrics["nll_loss"] = nll.detach()
    return loss, metrics


# ---------------------------------------------------------------------------------------------------------------
# The recipe (stages dpo, orpo, simpo, kto): examples -> token samples -> collator -> step -> the shared loop.
# ---------------------------------------------------------------------------------------------------------------

STAGE_LOSS = {"orpo": "orpo", "simpo": "simpo", "kto": "kto"}
"""The loss of each preference stage; stage ``dpo`` uses ``preference.loss`` (sigmoid, ipo or hinge)."""


@dataclass
class KtoSample:
    """A tokenized KTO example and its mismatched pair (this prompt, another example's answer) for the KL term."""

    seq: Tokenized
    label: bool
    kl_seq: Tokenized | None = None
    ref: tuple[float, float] | None = None  # (reference log-prob of seq, of kl_seq)


def kto_samples(examples: list, tokenizer, template: str, max_length: int, with_kl: bool) -> list[KtoSample]:
    """Tokenize KTO examples; example ``i``'s KL pair is its prompt with example ``i + 1``'s answer (TRL's shift)."""
    parts = []
    for ex in examples:
        prompt_text, answer_text = split_prompt_answer(tokenizer, template, ex.prompt, ex.completion, ex.where)
        parts.append((encode(tokenizer, prompt_text), encode(tokenizer, answer_text), ex.label))
    out = []
    for i, (prompt, answer, label) in enumerate(parts):
        kl = join_truncated(prompt, parts[(i + 1) % len(parts)][1], max_length) if with_kl and len(parts) > 1 else None
        out.append(KtoSample(join_truncated(prompt, answer, max_length), label, kl))
    return out


def collate_kto(samples: list[KtoSample], pad_id: int) -> dict:
    """A (B, T) batch of examples, followed by their B mismatched KL rows when present: (2B, T)."""
    seqs = [s.seq for s in samples]
    with_kl = all(s.kl_seq is not None for s in samples)
    batch = collate(seqs + ([s.kl_seq for s in samples] if with_kl else []), pad_id)
    batch["desirable"] = torch.tensor([s.label for s in samples])  # (B,) bool
    batch[LOSS_COUNT_KEY] = len(samples)
    if all(s.ref is not None for s in samples):
        refs = [s.ref[0] for s in samples] + ([s.ref[1] for s in samples] if with_kl else [])
        batch["ref_logps"] = torch.tensor(refs)
    return batch


def answer_logps(model, batch: dict, speed: SpeedCfg | None = None) -> Tensor:
    """Summed answer log-probs ``(N,)`` of a padded batch (``input_ids``, ``attention_mask``, ``labels``).

    With ``train.speed.chunked_ce`` on (the default) they come from the final hidden states and the lm_head
    chunk by chunk (`tunelab.kernels.linear_logps`), so the ``(N, T, V)`` logits, their float32 copy and their
    gradient are never held; the same numbers as ``sequence_logps(model(...).logits, labels)``. Models the
    chunked path does not support (prompt tuning, a wrapped lm_head, scaled logits) use the full logits.
    """
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if "position_ids" in batch:
        inputs["position_ids"] = batch["position_ids"]
    speed = speed or SpeedCfg()
    chunked = speed.wants("chunked_ce", batch["input_ids"].device.type)  # false, or mode plain: full logits
    parts = lm_parts(model) if chunked else "train.speed.chunked_ce is off"
    if isinstance(parts, str):
        if chunked:
            note_once(f"train.speed.chunked_ce: {parts}; preference log-probs use the full logits")
        return sequence_logps(model(**inputs, use_cache=False).logits, batch["labels"])
    decoder, head = parts
    hidden = decoder(**inputs, use_cache=False).last_hidden_state  # (N, T, H)
    return linear_sequence_logps(hidden, head.weight, batch["labels"], head.bias, chunk_size=speed.ce_chunk)


def _logps(model, batch: dict, speed: SpeedCfg | None) -> tuple[Tensor, Tensor]:
    """Summed answer log-probs ``(N,)`` and answer token counts ``(N,)`` of a batch under ``model``."""
    return answer_logps(model, batch, speed), target_counts(batch["labels"])


def reference_logps(reference: Reference | None, batch: dict, speed: SpeedCfg | None = None) -> Tensor | None:
    """Reference log-probs of every row: precomputed in the batch, else one no-grad reference forward."""
    if "ref_logps" in batch:
        return batch["ref_logps"].float()
    if reference is None:
        return None
    with reference.active() as model:
        return answer_logps(model, batch, speed).float()  # (N,)


def pair_step(model, batch: dict, loss_name: str, params: PreferenceParams, reference: Reference | None,
              speed: SpeedCfg | None = None):
    """(loss x pairs, pairs, metrics) for a batch from ``collate_pairs``; the loss is a mean over pairs."""
    logps, counts = _logps(model, batch, speed)  # (2B,) each
    n = batch[LOSS_COUNT_KEY]
    ref = None if loss_name in REFERENCE_FREE else reference_logps(reference, batch, speed)
    loss, metrics = preference_loss(loss_name, PreferenceLogps(
        chosen=logps[:n], rejected=logps[n:], chosen_tokens=counts[:n], rejected_tokens=counts[n:],
        ref_chosen=None if ref is None else ref[:n], ref_rejected=None if ref is None else ref[n:]), params)
    return loss * n, n, metrics


def kto_step(model, batch: dict, params: PreferenceParams, reference: Reference | None,
             speed: SpeedCfg | None = None):
    """(loss x examples, examples, metrics) for a batch from ``collate_kto``."""
    logps = answer_logps(model, batch, speed)  # (B,) or (2B,) with the KL rows
    ref = reference_logps(reference, batch, speed)
    n, good = batch[LOSS_COUNT_KEY], batch["desirable"]
    with_kl = logps.numel() > n
    loss, metrics = kto_loss(PreferenceLogps(
        chosen=logps[:n][good], rejected=logps[:n][~good], ref_chosen=ref[:n][good], ref_rejected=ref[:n][~good],
        kl=logps[n:].detach() if with_kl else None, ref_kl=ref[n:] if with_kl else None), params)
    return loss * n, n, metrics


@torch.no_grad()
def precompute_reference(samples: list, collate_fn, reference: Reference, batch_size: int, device,
                         speed: SpeedCfg | None = None) -> None:
    """Fill each sample's ``ref`` with reference log-probs in one pass, so training skips the reference forward."""
    for i in range(0, len(samples), batch_size):
        chunk = samples[i:i + batch_size]
        batch = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in collate_fn(chunk).items()}
        ref = reference_logps(reference, batch, speed).cpu().tolist()
        n = len(chunk)
        for j, s in enumerate(chunk):
            s.ref = (ref[j], ref[n + j] if len(ref) > n else 0.0)


def reference_samples(cfg, setup, collate_fn, precomputed: Reference | None, path: str) -> list:
    """A data file read as this stage's own samples (pairs, or KTO examples), for optim.ewc.data; with
    preference.precompute_ref they carry reference log-probs too, as the training batches do."""
    tok, tpl, max_len = setup.tokenizer, setup.template, cfg.data.max_length
    if cfg.stage == "kto":
        samples = kto_samples(load_kto(path), tok, tpl, max_len, cfg.preference.kto_kl)
    else:
        samples = pair_samples(load_preference(path), tok, tpl, max_len)
    if precomputed is not None:
        was_training = setup.model.training
        setup.model.eval()
        precompute_reference(samples, collate_fn, precomputed, cfg.train.batch_size, setup.device)
        setup.model.train(was_training)
    return samples


def run(cfg, progress: bool = True):
    """Train a dpo / orpo / simpo / kto run end to end and return the run folder path."""
    setup = setup_run(cfg, progress)
    pcfg, is_kto = cfg.preference, cfg.stage == "kto"
    loss_name = STAGE_LOSS.get(cfg.stage, pcfg.loss)
    params = PreferenceParams(beta=pcfg.beta_for(cfg.stage), label_smoothing=pcfg.label_smoothing,
                              gamma=pcfg.gamma, desirable_weight=pcfg.desirable_weight,
                              undesirable_weight=pcfg.undesirable_weight, sft_weight=pcfg.sft_weight)
    tok, tpl, max_len = setup.tokenizer, setup.template, cfg.data.max_length
    if is_kto:
        train_ex, val_ex = load_split(cfg.data, load_kto, cfg.train.seed, stage=cfg.stage)
        train = kto_samples(train_ex, tok, tpl, max_len, pcfg.kto_kl)
        val = kto_samples(val_ex, tok, tpl, max_len, pcfg.kto_kl)
        collate_fn = partial(collate_kto, pad_id=tok.pad_token_id)
    else:
        train_ex, val_ex = load_split(cfg.data, load_preference, cfg.train.seed, stage=cfg.stage)
        train, val = pair_samples(train_ex, tok, tpl, max_len), pair_samples(val_ex, tok, tpl, max_len)
        collate_fn = partial(collate_pairs, pad_id=tok.pad_token_id)
    reference = precomputed = None
    if loss_name not in REFERENCE_FREE:
        reference = Reference(setup.model, copy_weights=not pcfg.precompute_ref)
        if pcfg.precompute_ref:
            setup.model.eval()
            for samples in (train, val):
                precompute_reference(samples, collate_fn, reference, cfg.train.batch_size, setup.device,
                                     cfg.train.speed)
            precomputed, reference = reference, None  # every batch now carries its reference log-probs
    say(progress, f"{cfg.stage} ({loss_name}, beta={params.beta}): {len(train)} train / {len(val)} validation "
        f"examples from {cfg.data.train}; reference: "
        + ("none" if loss_name in REFERENCE_FREE else "precomputed" if pcfg.precompute_ref
           else "adapters off" if reference.shares_weights else "frozen copy"))
    step = (partial(kto_step, params=params, reference=reference, speed=cfg.train.speed) if is_kto
            else partial(pair_step, loss_name=loss_name, params=params, reference=reference, speed=cfg.train.speed))
    result = fit(setup, Recipe(train=cfg.train, optim=cfg.optim, samples=train, val=val, collate=collate_fn, loss=step,
                               reference_data=partial(reference_samples, cfg, setup, collate_fn, precomputed)),
                 progress=progress)
    stats = {"format": "kto" if is_kto else "preference", "train_samples": len(train), "val_samples": len(val),
             "loss": loss_name, "beta": params.beta,
             "truncated": sum(s.seq.truncated if is_kto else s.chosen.truncated or s.rejected.truncated
                              for s in train + val)}
    return finish_run(setup, result.summary, stats)
