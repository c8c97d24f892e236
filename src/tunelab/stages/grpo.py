"""GRPO: group-relative advantages and the clipped surrogate with a KL penalty to the reference.

Group Relative Policy Optimization (Shao et al. 2024, DeepSeekMath, Sec. 4.1) samples ``G`` completions per
prompt, scores them, and uses each score's z-score inside its group as the advantage of every token of that
completion, so no critic is needed. The policy loss is PPO's clipped surrogate plus ``beta`` times the
k3 estimate of KL(pi || pi_ref), added per token.

What is implemented:

- Advantages (``group_advantages``): ``(r_i - mean_group) / (std_group + eps)`` with the unbiased (n - 1)
  standard deviation and ``eps = 1e-4``, as TRL's GRPOTrainer does; ``scale=False`` keeps only the mean
  subtraction (Dr. GRPO, Liu et al. 2025, argues the std division biases toward easy/hard prompts).
- Clipping: ``clip(rho, 1 - eps_low, 1 + eps_high)``; ``eps_high > eps_low`` is DAPO's "clip-higher"
  (Yu et al. 2025, Sec. 3.1). The KL term is not clipped.
- Averaging over tokens (``reduction``), the registry ``GRPO_REDUCTIONS``:
    ``sequence``  mean over completions of each completion's token mean (GRPO paper, Eq. 3)
    ``token``     sum over all tokens / number of tokens (DAPO's token-level loss, Eq. 8), so long
                  completions weigh in proportion to their length
    ``dr_grpo``   sum over all tokens / (completions x padded length T) (Dr. GRPO), a length-independent
                  constant; pad T to the generation limit to match the paper.

Rows are grouped contiguously: the completions of prompt ``p`` are rows ``p*G .. p*G + G - 1``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor

from tunelab.data.pipeline import load_conversations
from tunelab.data.templates import stop_token_ids
from tunelab.engine import distributed
from tunelab.engine.loop import LOSS_COUNT_KEY, Recipe, fit
from tunelab.training.common import (
    check_same_shape,
    kl_k3,
    masked_mean,
    pick,
    token_logps,
)
from tunelab.training.setup import finish_run, load_split, say, setup_run
from tunelab.training.reference import Reference
from tunelab.training.rewards import check_columns, load_rewards, score
from tunelab.training.rollout import (collate_prompts, completion_batch, prompt_samples, reward_context,
                                     sample_completions)

Reduction = Callable[[Tensor, Tensor], Tensor]


def group_advantages(rewards: Tensor, group_size: int, scale: bool = True, eps: float = 1e-4) -> Tensor:
    """Group-normalized advantage of each completion; ``(N,) -> (N,)`` with ``N = prompts * group_size``.

    A group whose rewards are all equal gets advantage 0 for every member (nothing to learn from it).
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (one score per completion), got shape {tuple(rewards.shape)}")
    if group_size < 2 or rewards.numel() % group_size:
        raise ValueError(
            f"group_size={group_size} must be >= 2 and divide the number of completions ({rewards.numel()}); "
            "sample the same number of completions for every prompt"
        )
    grouped = rewards.view(-1, group_size)  # (P, G)
    centred = grouped - grouped.mean(dim=1, keepdim=True)  # (P, G)
    if scale:
        centred = centred / (grouped.std(dim=1, keepdim=True) + eps)  # unbiased std, as in TRL
    return centred.reshape(-1)


def reduce_sequence(per_token: Tensor, mask: Tensor) -> Tensor:
    """Mean over sequences of each sequence's masked token mean (GRPO)."""
    return masked_mean(per_token, mask, dim=1).mean()


def reduce_token(per_token: Tensor, mask: Tensor) -> Tensor:
    """Masked mean over every token of the batch (DAPO token-level)."""
    return masked_mean(per_token, mask)


def reduce_dr_grpo(per_token: Tensor, mask: Tensor) -> Tensor:
    """Masked sum divided by (rows x padded length), a constant (Dr. GRPO)."""
    return (per_token * mask).sum() / mask.numel()


GRPO_REDUCTIONS: dict[str, Reduction] = {"sequence": reduce_sequence, "token": reduce_token, "dr_grpo": reduce_dr_grpo}


def grpo_loss(
    logps: Tensor,
    advantages: Tensor,
    mask: Tensor,
    old_logps: Tensor | None = None,
    ref_logps: Tensor | None = None,
    beta: float = 0.04,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    reduction: str = "sequence",
) -> tuple[Tensor, dict[str, Tensor]]:
    """GRPO objective (Shao et al. 2024, Eq. 3), negated for minimization.

    Per token: ``-min(rho A, clip(rho, 1 - eps, 1 + eps_high) A) + beta * k3(pi, pi_ref)`` with
    ``rho = exp(log pi - log pi_old)`` and ``A`` the completion's advantage, then averaged by ``reduction``.

    Args:
        logps: ``(N, T)`` log-probs of the sampled tokens under the policy being trained (with grad).
        advantages: ``(N,)`` from ``group_advantages``.
        mask: ``(N, T)`` generated tokens.
        old_logps: ``(N, T)`` log-probs at sampling time; None means the update is on-policy (``rho = 1``,
            the value still carries the gradient ``A * grad log pi``).
        ref_logps: ``(N, T)`` reference log-probs; required when ``beta > 0``.
        beta: KL coefficient (DeepSeekMath: 0.04; 0 drops the reference model).
        clip_eps, clip_eps_high: lower/upper clip range (upper defaults to the lower).
        reduction: ``sequence``, ``token`` or ``dr_grpo`` (see the module docstring).

    Returns:
        ``(loss, metrics)``; metrics: ``kl`` (token-mean k3), ``clip_ratio`` (share of tokens whose
        clipped term was chosen), both detached.
    """
    reduce = pick(GRPO_REDUCTIONS, reduction, "GRPO reduction")
    if old_logps is None:
        old_logps = logps.detach()
    check_same_shape(logps=logps, old_logps=old_logps, ref_logps=ref_logps, mask=mask)
    if advantages.shape != logps.shape[:1]:
        raise ValueError(f"advantages must have shape ({logps.size(0)},), one per completion; "
                         f"got {tuple(advantages.shape)}")
    if beta and ref_logps is None:
        raise ValueError("grpo_loss needs ref_logps when beta > 0; pass beta=0 to train without a reference model")
    adv = advantages.unsqueeze(1)  # (N, 1), broadcast over tokens
    ratio = torch.exp(logps - old_logps)  # (N, T)
    high = clip_eps if clip_eps_high is None else clip_eps_high
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1 - clip_eps, 1 + high) * adv
    per_token = -torch.min(unclipped, clipped)  # (N, T)
    metrics = {"clip_ratio": masked_mean((clipped < unclipped).float(), mask).detach()}
    if ref_logps is not None:
        kl = kl_k3(logps, ref_logps)  # (N, T)
        metrics["kl"] = masked_mean(kl.detach(), mask)
        if beta:
            per_token = per_token + beta * kl
    return reduce(per_token, mask), metrics


# ---------------------------------------------------------------------------------------------------------------
# The recipe (stage grpo): prompts -> k sampled completions each -> rewards -> group advantages -> clipped loss.
# One policy update per sampled batch, so the update is on-policy (rho = 1 in value, gradient A * grad log pi).
# ---------------------------------------------------------------------------------------------------------------


class GrpoStep:
    """The loss function handed to the loop: sample, score, normalize within groups, clipped loss with KL.

    Every sampled completion and its rewards are appended to ``completions.jsonl`` in the run folder, so the
    logged reward curve can be read back example by example. In a distributed run only rank 0 writes it (its
    own share of the batch), as only rank 0 writes the run folder.
    """

    def __init__(self, gcfg, rewards: dict, tokenizer, template: str, reference: Reference | None, log_path):
        self.cfg, self.rewards, self.tok = gcfg, rewards, tokenizer
        self.stop_ids = stop_token_ids(tokenizer, template)
        self.reference, self.log_path, self.calls = reference, log_path, 0
        self.weights = gcfg.reward_weights or [1.0] * len(rewards)

    def sample(self, model, batch: dict) -> Tensor:
        """``(B * G, P + L)`` sequences; the G completions of prompt p are rows p*G .. p*G + G - 1."""
        return sample_completions(model, batch, self.cfg.group_size, self.cfg, self.stop_ids, self.tok.pad_token_id)

    def __call__(self, model, batch: dict):
        g, n_prompts = self.cfg.group_size, batch[LOSS_COUNT_KEY]
        sequences = self.sample(model, batch)
        prompt_mask = batch["attention_mask"].repeat_interleave(g, dim=0)  # (N, P)
        scored = completion_batch(sequences, prompt_mask, self.stop_ids, self.tok.pad_token_id)
        width = prompt_mask.size(1)
        ids = [row[keep].tolist()  # the completion up to its stop token
               for row, keep in zip(sequences[:, width:], scored["attention_mask"][:, width:].bool())]
        texts = [self.tok.decode(row, skip_special_tokens=True) for row in ids]
        answers = [a for a in batch["answers"] for _ in range(g)]
        prompts = [p for p in batch["prompts"] for _ in range(g)]
        per_fn = score(self.rewards, texts, answers, prompts, **reward_context(batch, g, ids))
        total = torch.tensor([sum(w * v[i] for w, v in zip(self.weights, per_fn.values()))
                              for i in range(len(texts))], device=sequences.device)  # (N,)
        advantages = group_advantages(total, g, scale=self.cfg.scale_rewards)
        out = model(input_ids=scored["input_ids"], attention_mask=scored["attention_mask"],
                    position_ids=scored["position_ids"], use_cache=False)
        logps, mask = token_logps(out.logits, scored["labels"])  # (N, T-1) each
        ref_logps = None
        if self.reference is not None:
            ref_logps, _ = token_logps(self.reference.logits(scored), scored["labels"])
        loss, metrics = grpo_loss(logps, advantages, mask, ref_logps=ref_logps, beta=self.cfg.beta,
                                  clip_eps=self.cfg.clip_eps, clip_eps_high=self.cfg.clip_eps_high,
                                  reduction=self.cfg.reduction)
        metrics.update({"reward": total.mean(), "reward_std": total.view(-1, g).std(dim=1).mean(),
                        "completion_length": mask.sum(-1).float().mean(),
                        **{f"rewards/{k}": sum(v) / len(v) for k, v in per_fn.items()}})
        self._log(texts, prompts, answers, per_fn, total, advantages, model.training)
        return loss * n_prompts, n_prompts, metrics

    def _log(self, texts, prompts, answers, per_fn, total, advantages, training: bool) -> None:
        self.calls += 1
        if not distributed.current().is_main:  # the run folder is rank 0's
            return
        rows = [{"call": self.calls, "split": "train" if training else "eval", "prompt": prompts[i][-1]["content"],
                 "reference": answers[i], "completion": text, "rewards": {k: v[i] for k, v in per_fn.items()},
                 "reward": float(total[i]), "advantage": float(advantages[i])} for i, text in enumerate(texts)]
        with open(self.log_path, "a", encoding="utf-8") as f:  # an append-only log, like metrics.jsonl
            f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def run(cfg, progress: bool = True):
    """Train with GRPO end to end and return the run folder path."""
    gcfg = cfg.grpo
    # before the model loads and the run folder is made: an unknown reward is one error, nothing written
    rewards = load_rewards(gcfg.rewards, "grpo.rewards", gcfg.format_regex, gcfg.length_target)
    setup = setup_run(cfg, progress)
    train_convs, val_convs = load_split(cfg.data, lambda path: load_conversations(path, cfg.data.format)[0],
                                        cfg.train.seed, stage=cfg.stage)
    tok, tpl = setup.tokenizer, setup.template
    train = prompt_samples(cfg.data, tok, tpl, train_convs)
    val = prompt_samples(cfg.data, tok, tpl, val_convs)
    check_columns(rewards, train[0].columns if train else {}, "grpo.rewards")
    reference = Reference(setup.model) if gcfg.beta > 0 else None
    say(progress, f"grpo: {len(train)} train / {len(val)} validation prompts, {gcfg.group_size} completions each; "
        f"rewards {', '.join(gcfg.rewards)}")
    from tunelab.runfolder import RunFolder

    step = GrpoStep(gcfg, rewards, tok, tpl, reference, RunFolder(setup.run_dir).completions_path)
    result = fit(setup, Recipe(train=cfg.train, optim=cfg.optim, samples=train, val=val,
                               collate=partial(collate_prompts, pad_id=tok.pad_token_id), loss=step),
                 progress=progress)
    stats = {"format": "prompts", "train_samples": len(train), "val_samples": len(val),
             "rewards": list(gcfg.rewards), "group_size": gcfg.group_size}
    return finish_run(setup, result.summary, stats)
