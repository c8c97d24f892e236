"""Run TRL's own loss code on given log-probs, as the reference for tunelab's preference and reward losses.

TRL computes these losses inside trainer methods that call the model. The helpers build a trainer object
without running its ``__init__`` (``object.__new__``), set only the attributes the method reads, and pass a
stand-in model that returns the log-probs we choose. What runs is TRL's unmodified method:

- DPO (sigmoid / ipo / hinge): ``trl/trainer/dpo_trainer.py``, ``DPOTrainer._compute_loss``
- KTO: ``trl/trainer/kto_trainer.py``, ``KTOTrainer._compute_loss`` (+ ``_compute_kl_logps``)
- ORPO: ``trl/experimental/orpo/orpo_trainer.py``, ``ORPOTrainer.get_batch_loss_metrics`` (+ ``odds_ratio_loss``)
- SimPO: ``trl/experimental/cpo/cpo_trainer.py``, ``CPOTrainer.get_batch_loss_metrics`` (+ ``cpo_loss``)
- Reward: ``trl/trainer/reward_trainer.py``, ``RewardTrainer.compute_loss``
- Sequence log-probs: ``CPOTrainer.get_batch_logps`` (same file as SimPO)
"""

from __future__ import annotations

import os
from collections import defaultdict
from types import SimpleNamespace

import torch
from torch import Tensor, nn

CPU = torch.device("cpu")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # ORPO and CPO live in trl.experimental


def trl_batch_logps(logits: Tensor, labels: Tensor, average: bool) -> Tensor:
    """``CPOTrainer.get_batch_logps`` (trl/experimental/cpo/cpo_trainer.py), a static method."""
    from trl.experimental.cpo import CPOTrainer

    return CPOTrainer.get_batch_logps(logits, labels.clone(), average_log_prob=average)


class ScriptedLM(nn.Module):
    """Stands in for a causal LM: returns preset per-token log-probs for each registered ``input_ids`` tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.table: list[tuple[Tensor, Tensor]] = []

    def add(self, input_ids: Tensor, log_probs: Tensor) -> None:
        self.table.append((input_ids, log_probs))

    def forward(self, input_ids: Tensor, **_: object) -> SimpleNamespace:
        for ids, log_probs in self.table:
            if ids.shape == input_ids.shape and torch.equal(ids, input_ids):
                zeros = torch.zeros_like(log_probs)
                return SimpleNamespace(log_probs=log_probs, entropy=zeros, mean_logits=zeros,
                                       is_top1=torch.zeros_like(log_probs, dtype=torch.bool), aux_loss=None)
        raise KeyError("ScriptedLM got input_ids it was not given log-probs for")


def _accelerator() -> SimpleNamespace:
    return SimpleNamespace(device=CPU, gather_for_metrics=lambda x: x, gather=lambda x: x, num_processes=1)


def _bare(cls: type, **attrs: object) -> object:
    trainer = object.__new__(cls)
    base = {"accelerator": _accelerator(), "_metrics": {"train": defaultdict(list), "eval": defaultdict(list)},
            "_total_train_tokens": 0, "_tp_size": 1, "aux_loss_enabled": False}
    for name, value in {**base, **attrs}.items():
        object.__setattr__(trainer, name, value)
    return trainer


def _last(metrics: dict[str, list[float]]) -> dict[str, float]:
    return {key: values[-1] for key, values in metrics.items() if values}


def trl_dpo(loss_type: str, per_token: Tensor, ref_logps: Tensor, completion_mask: Tensor, beta: float,
            label_smoothing: float = 0.0, sft_weight: float = 0.0) -> tuple[Tensor, dict[str, float]]:
    """TRL's DPO on a batch laid out as TRL does: rows ``[chosen..., rejected...]``.

    ``sft_weight`` > 0 adds TRL's ``"sft"`` loss type with that weight (``loss_weights=[1, sft_weight]``).
    ``per_token`` ``(2B, T-1)`` are policy log-probs (0 off the completion), ``ref_logps`` ``(2B,)`` summed
    reference log-probs, ``completion_mask`` ``(2B, T)``.
    """
    from trl import DPOTrainer

    model = ScriptedLM().train()
    input_ids = torch.arange(completion_mask.numel()).view_as(completion_mask)
    model.add(input_ids, per_token)
    trainer = _bare(DPOTrainer, model=model, ref_model=None, beta=beta, loss_types=[loss_type] + (["sft"] if sft_weight else []),
                    loss_weights=[1.0] + ([sft_weight] if sft_weight else []),
                    ld_alpha=None, precompute_ref_logps=True, f_divergence_type="reverse_kl",
                    label_smoothing=label_smoothing, use_weighting=False)
    ref_chosen, ref_rejected = ref_logps.chunk(2)
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
              "completion_mask": completion_mask, "ref_chosen_logps": ref_chosen, "ref_rejected_logps": ref_rejected}
    loss = trainer._compute_loss(model, inputs, return_outputs=False)
    return loss, _last(trainer._metrics["train"])


def trl_kto(per_token: Tensor, ref_logps: Tensor, labels: Tensor, kl_per_token: Tensor, ref_kl_logps: Tensor,
            beta: float, desirable_weight: float, undesirable_weight: float) -> tuple[Tensor, dict[str, float]]:
    """TRL's KTO: ``per_token`` ``(N, T-1)`` completion log-probs, ``labels`` ``(N,)`` bool (True = desirable),
    ``kl_per_token`` ``(N, T-1)`` policy log-probs of the mismatched pairs, reference sums ``(N,)``."""
    from trl import KTOTrainer

    model = ScriptedLM().train()
    n, width = per_token.shape[0], per_token.shape[1] + 1
    input_ids = torch.arange(n * width).view(n, width)
    kl_input_ids = input_ids + n * width
    model.add(input_ids, per_token)
    model.add(kl_input_ids, kl_per_token)
    trainer = _bare(KTOTrainer, model=model, ref_model=None, beta=beta, loss_type="kto", calculate_KL=True,
                    precompute_ref_logps=True, desirable_weight=desirable_weight,
                    undesirable_weight=undesirable_weight)
    ones = torch.ones_like(input_ids)
    inputs = {"input_ids": input_ids, "attention_mask": ones, "completion_mask": ones, "label": labels,
              "KL_input_ids": kl_input_ids, "KL_attention_mask": ones, "KL_completion_mask": ones,
              "ref_logps": ref_logps, "ref_KL_logps": ref_kl_logps}
    loss = trainer._compute_loss(model, inputs, return_outputs=False)
    return loss, _last(trainer._metrics["train"])


def _pairwise(cls: type, avg_chosen: Tensor, avg_rejected: Tensor, nll: Tensor, **attrs: object):
    trainer = _bare(cls, **attrs)
    logits = torch.zeros(avg_chosen.shape[0], 1, 1)
    trainer.concatenated_forward = lambda model, batch: (avg_chosen, avg_rejected, logits, logits, nll)
    return trainer.get_batch_loss_metrics(model=None, batch={}, train_eval="train")


def trl_orpo(avg_chosen: Tensor, avg_rejected: Tensor, nll: Tensor, beta: float) -> tuple[Tensor, dict[str, float]]:
    """TRL's ORPO from per-token averaged log-probs ``(B,)`` and the chosen NLL ``()``."""
    from trl.experimental.orpo import ORPOTrainer

    return _pairwise(ORPOTrainer, avg_chosen, avg_rejected, nll, beta=beta)


def trl_simpo(avg_chosen: Tensor, avg_rejected: Tensor, beta: float, gamma: float,
              label_smoothing: float) -> tuple[Tensor, dict[str, float]]:
    """TRL's SimPO: CPOTrainer with ``loss_type='simpo'`` and ``cpo_alpha=0`` (what CPOConfig sets for SimPO)."""
    from trl.experimental.cpo import CPOTrainer

    return _pairwise(CPOTrainer, avg_chosen, avg_rejected, torch.tensor(0.0), beta=beta, loss_type="simpo",
                     simpo_gamma=gamma, label_smoothing=label_smoothing, alpha=0.0, cpo_alpha=0.0)


def trl_reward(chosen: Tensor, rejected: Tensor, margin: Tensor | None,
               center_coef: float | None) -> tuple[Tensor, dict[str, float]]:
    """TRL's RewardTrainer.compute_loss on scalar rewards ``(B,)`` each."""
    from trl import RewardTrainer

    class ScriptedRM(nn.Module):
        def forward(self, **_: object) -> SimpleNamespace:
            return SimpleNamespace(logits=torch.cat([chosen, rejected]).unsqueeze(-1))

    model = ScriptedRM().train()
    trainer = _bare(RewardTrainer, model=model, args=SimpleNamespace(center_rewards_coefficient=center_coef))
    inputs: dict[str, object] = {"attention_mask": torch.ones(2 * chosen.shape[0], 3, dtype=torch.long)}
    if margin is not None:
        inputs["margin"] = margin
    loss = trainer.compute_loss(model, inputs)
    return loss, _last(trainer._metrics["train"])
