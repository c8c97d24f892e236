"""PPO for language models: KL-shaped rewards, GAE advantages, clipped policy and value losses.

The RLHF recipe of Ziegler et al. 2019 / InstructGPT (Ouyang et al. 2022): a sampled completion earns the
reward model's score at its last token and a per-token penalty ``-kl_coef * KL(pi || pi_ref)``; GAE
(Schulman et al. 2016) turns those rewards and the critic's values into advantages; PPO's clipped surrogate
(Schulman et al. 2017) updates the policy and a clipped regression updates the critic.

Every per-token tensor is ``(B, T)`` over the completion tokens with ``mask`` (1 = generated token).
The mask may be left- or right-padded or have holes: masked positions are skipped, so the recursion
links each generated token to the next generated one.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tunelab.training.common import (
    KL_ESTIMATORS,
    check_same_shape,
    masked_mean,
    masked_whiten,
    pick,
)


def kl_penalty(logps: Tensor, ref_logps: Tensor, mask: Tensor, estimator: str = "k1") -> Tensor:
    """Per-token KL(pi || pi_ref) estimate on sampled tokens, 0 where masked; ``(B, T) -> (B, T)``.

    ``estimator``: ``k1`` (``log pi - log pi_ref``, unbiased, the classic RLHF penalty), ``k2`` or ``k3``
    (non-negative, lower variance); see ``tunelab.training.common.KL_ESTIMATORS``.
    """
    check_same_shape(logps=logps, ref_logps=ref_logps, mask=mask)
    return pick(KL_ESTIMATORS, estimator, "KL estimator")(logps, ref_logps) * mask


def shaped_rewards(
    scores: Tensor, logps: Tensor, ref_logps: Tensor, mask: Tensor, kl_coef: float, estimator: str = "k1"
) -> Tensor:
    """Per-token rewards: ``-kl_coef * KL`` on every generated token, plus the sequence score on the last one.

    Args:
        scores: ``(B,)`` reward-model score of each completion.
        logps, ref_logps: ``(B, T)`` log-probs of the sampled tokens under the policy and the reference.
        mask: ``(B, T)`` generated tokens.

    Returns:
        ``(B, T)``, detached; a row without generated tokens gets no reward.
    """
    with torch.no_grad():  # rewards are targets, never differentiated
        rewards = -kl_coef * kl_penalty(logps, ref_logps, mask, estimator)  # (B, T)
    positions = torch.arange(mask.size(1), device=mask.device).expand_as(mask)  # (B, T)
    last = torch.where(mask.bool(), positions, -1).max(dim=1).values  # (B,) index of the last generated token
    has_tokens = last >= 0
    rows = torch.arange(mask.size(0), device=mask.device)[has_tokens]
    return rewards.index_put((rows, last[has_tokens]), scores[has_tokens].to(rewards.dtype), accumulate=True)


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95) -> tuple[Tensor, Tensor]:
    """Generalized Advantage Estimation (Schulman et al. 2016, Eq. 16) over masked sequences.

    ``delta_t = r_t + gamma * V_{t'} - V_t`` and ``A_t = delta_t + gamma * lam * A_{t'}``, where ``t'`` is the next
    generated token after ``t`` (past the last one, ``V = 0`` and ``A = 0``: the episode ends).
    Returns ``(advantages, returns)`` with ``returns = advantages + values`` (the critic's target); both are
    ``(B, T)`` and 0 where masked. Computed without gradient: both are targets.
    """
    check_same_shape(rewards=rewards, values=values, mask=mask)
    with torch.no_grad():
        live = mask.bool()
        advantages = torch.zeros_like(values)
        next_value = values.new_zeros(values.size(0))  # (B,) value of the next generated token
        next_adv = values.new_zeros(values.size(0))  # (B,) its advantage
        for t in reversed(range(values.size(1))):
            delta = rewards[:, t] + gamma * next_value - values[:, t]  # (B,)
            adv = delta + gamma * lam * next_adv
            advantages[:, t] = torch.where(live[:, t], adv, 0.0)
            next_value = torch.where(live[:, t], values[:, t], next_value)
            next_adv = torch.where(live[:, t], adv, next_adv)
        returns = (advantages + values) * mask
    return advantages, returns


def policy_loss(
    logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor, clip_eps: float = 0.2
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped surrogate (Schulman et al. 2017, Eq. 7), token-mean over generated tokens.

    ``-min(rho A, clip(rho, 1 - eps, 1 + eps) A)`` with ``rho = exp(log pi - log pi_old)``.
    Metrics: ``clipfrac`` (share of tokens where the clipped term was chosen), ``approx_kl``
    (``mean((log pi_old - log pi)^2) / 2``, how far the policy moved since sampling), ``ratio`` (mean rho).
    """
    check_same_shape(logps=logps, old_logps=old_logps, advantages=advantages, mask=mask)
    log_ratio = logps - old_logps  # (B, T)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps)
    loss = masked_mean(torch.max(unclipped, clipped), mask)
    metrics = {
        "clipfrac": masked_mean((clipped > unclipped).float(), mask).detach(),
        "approx_kl": masked_mean(0.5 * log_ratio.detach() ** 2, mask),
        "ratio": masked_mean(ratio.detach(), mask),
    }
    return loss, metrics


def value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip_range: float | None = 0.2
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped value loss ``0.5 * max((V - R)^2, (V_clip - R)^2)``, token-mean over generated tokens.

    ``V_clip = old_V + clamp(V - old_V, -c, c)`` keeps the critic near the values used to compute the
    advantages (as in OpenAI baselines' PPO2 and TRL); ``clip_range=None`` gives the plain squared error.
    Metric ``vf_clipfrac``: share of tokens where the clipped error was larger.
    """
    check_same_shape(values=values, old_values=old_values, returns=returns, mask=mask)
    plain = (values - returns) ** 2  # (B, T)
    if clip_range is None:
        return 0.5 * masked_mean(plain, mask), {"vf_clipfrac": plain.new_zeros(())}
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(plain, clipped), mask)
    return loss, {"vf_clipfrac": masked_mean((clipped > plain).float(), mask).detach()}


# ---------------------------------------------------------------------------------------------------------------
# The recipe (stage ppo): prompts -> one sampled completion each -> reward-model score -> KL-shaped rewards ->
# GAE with the value head -> clipped policy loss + value loss. One update per sampled batch (on-policy).
# ---------------------------------------------------------------------------------------------------------------


class PolicyWithValue(torch.nn.Module):
    """The policy (a causal LM, adapters included) with a per-token value head on its last hidden state.

    The head is the critic; it shares the policy's body (as TRL's ``AutoModelForCausalLMWithValueHead``)
    and is saved with the run as ``head.safetensors`` (see ``tunelab.training.heads.HeadMethod``).
    """

    def __init__(self, lm: torch.nn.Module, seed: int = 0):
        super().__init__()
        from tunelab.training.heads import ScoreModel

        self.lm = lm
        self.head = ScoreModel(lm, 1, seed=seed).head  # same initialisation as the reward head
        self.labels = None

    def forward(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor) -> tuple[Tensor, Tensor]:
        """``(logits (N, T, V), values (N, T))``."""
        out = self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                      output_hidden_states=True, use_cache=False)
        values = self.head(out.hidden_states[-1].to(self.head.weight.dtype)).squeeze(-1)
        return out.logits, values

    def generate(self, **kw) -> Tensor:
        return self.lm.generate(**kw)

    def gradient_checkpointing_enable(self, **kw) -> None:
        self.lm.gradient_checkpointing_enable(**kw)


def right_aligned(input_ids: Tensor, attention_mask: Tensor, pad_id: int) -> tuple[Tensor, Tensor]:
    """Move each row's real tokens to the left (right padding), as the reward model was trained to read them."""
    ids = torch.full_like(input_ids, pad_id)
    mask = torch.zeros_like(attention_mask)
    for i in range(input_ids.size(0)):
        real = input_ids[i][attention_mask[i].bool()]
        ids[i, :real.numel()] = real
        mask[i, :real.numel()] = 1
    return ids, mask


class PpoStep:
    """The loss function handed to the loop: sample, score, shape, GAE, clipped policy and value losses."""

    def __init__(self, pcfg, scorer, reference, tokenizer, template: str, log_path):
        from tunelab.data.templates import stop_token_ids

        self.cfg, self.scorer, self.reference, self.tok, self.log_path = pcfg, scorer, reference, tokenizer, log_path
        self.stop_ids = stop_token_ids(tokenizer, template)

    def __call__(self, model, batch: dict):
        from tunelab.engine.loop import LOSS_COUNT_KEY
        from tunelab.training.common import token_logps
        from tunelab.training.rollout import completion_batch, sample_completions

        pad = self.tok.pad_token_id
        sequences = sample_completions(model, batch, 1, self.cfg, self.stop_ids, pad)  # (B, P + L)
        scored = completion_batch(sequences, batch["attention_mask"], self.stop_ids, pad)
        with torch.no_grad():
            scores = self.scorer(*right_aligned(scored["input_ids"], scored["attention_mask"], pad)).squeeze(-1)
            ref_logps, _ = token_logps(self.reference.logits(scored), scored["labels"])  # (B, T-1)
        logits, values = model(scored["input_ids"], scored["attention_mask"], scored["position_ids"])
        logps, mask = token_logps(logits, scored["labels"])  # (B, T-1): token t+1 given the prefix up to t
        values = values[:, :-1]  # (B, T-1): the value of the state before each scored token
        old_logps, old_values = logps.detach(), values.detach()
        rewards = shaped_rewards(scores.float(), old_logps, ref_logps, mask, self.cfg.kl_coef,
                                 self.cfg.kl_estimator)
        advantages, returns = gae(rewards, old_values, mask, self.cfg.gamma, self.cfg.lam)
        if self.cfg.whiten_advantages:
            advantages = masked_whiten(advantages, mask)
        pg, pg_metrics = policy_loss(logps, old_logps, advantages, mask, self.cfg.clip_eps)
        vf, vf_metrics = value_loss(values, old_values, returns, mask, self.cfg.vf_clip)
        loss = pg + self.cfg.vf_coef * vf
        n = batch[LOSS_COUNT_KEY]
        kl = kl_penalty(old_logps, ref_logps, mask, self.cfg.kl_estimator).sum(-1).mean()  # per completion
        metrics = {"score": scores.mean(), "kl": kl, "pg_loss": pg.detach(), "vf_loss": vf.detach(),
                   "completion_length": mask.sum(-1).float().mean(), **pg_metrics, **vf_metrics}
        self._log(sequences, scored, scores, batch, model.training)
        return loss * n, n, metrics

    def _log(self, sequences: Tensor, scored: dict, scores: Tensor, batch: dict, training: bool) -> None:
        import json

        from tunelab.engine import distributed

        if not distributed.current().is_main:  # only rank 0 writes the run folder (its own share of the batch)
            return
        width = batch["attention_mask"].size(1)
        texts = [self.tok.decode(row[keep], skip_special_tokens=True)
                 for row, keep in zip(sequences[:, width:], scored["attention_mask"][:, width:].bool())]
        rows = [{"split": "train" if training else "eval", "prompt": p[-1]["content"], "completion": t,
                 "score": float(s)} for p, t, s in zip(batch["prompts"], texts, scores)]
        with open(self.log_path, "a", encoding="utf-8") as f:  # an append-only log, like metrics.jsonl
            f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def run(cfg, progress: bool = True):
    """Train with PPO against a reward run end to end and return the run folder path."""
    from functools import partial

    from tunelab.data.pipeline import load_conversations
    from tunelab.engine.loop import Recipe, fit
    from tunelab.run import Run
    from tunelab.runfolder import RunFolder
    from tunelab.training.rollout import collate_prompts, prompt_samples
    from tunelab.training.heads import HeadMethod, load_scorer
    from tunelab.training.setup import (
        finish_run,
        load_split,
        recount_parameters,
        say,
        setup_run,
    )
    from tunelab.training.reference import Reference

    if cfg.ppo is None:
        raise ValueError("stage ppo needs a ppo: section with a reward model, e.g. ppo: {reward_model: runs/my-rm}")
    pcfg = cfg.ppo
    reward_run = Run(pcfg.reward_model)
    if reward_run.config.stage != "reward":
        raise ValueError(f"ppo.reward_model: {pcfg.reward_model} is a {reward_run.config.stage} run; train one with "
                         "stage: reward first")
    setup = setup_run(cfg, progress)
    if reward_run.load_tokenizer().get_vocab() != setup.tokenizer.get_vocab():
        raise ValueError(f"ppo.reward_model: {pcfg.reward_model} uses another tokenizer than {cfg.model.name}; "
                         "the reward model must read the policy's tokens")
    scorer = load_scorer(reward_run, device=str(setup.device)).requires_grad_(False)
    reference = Reference(setup.model)
    setup.model = PolicyWithValue(setup.model, seed=cfg.train.seed)
    setup.method = HeadMethod(setup.method)
    recount_parameters(setup)
    train_convs, val_convs = load_split(cfg.data, lambda path: load_conversations(path, cfg.data.format)[0],
                                        cfg.train.seed, stage=cfg.stage)
    tok, tpl = setup.tokenizer, setup.template
    train, val = prompt_samples(cfg.data, tok, tpl, train_convs), prompt_samples(cfg.data, tok, tpl, val_convs)
    say(progress, f"ppo: {len(train)} train / {len(val)} validation prompts; reward model {pcfg.reward_model}")
    step = PpoStep(pcfg, scorer, reference, tok, tpl, RunFolder(setup.run_dir).completions_path)
    result = fit(setup, Recipe(train=cfg.train, optim=cfg.optim, samples=train, val=val,
                               collate=partial(collate_prompts, pad_id=tok.pad_token_id), loss=step),
                 progress=progress)
    stats = {"format": "prompts", "train_samples": len(train), "val_samples": len(val),
             "reward_model": pcfg.reward_model}
    return finish_run(setup, result.summary, stats)
