"""Stage names and stage-specific config sections.

Each stage reads its own section of the run config (`preference:`, `reward:`, `classify:`); the other
sections keep their defaults and are ignored by stages that do not use them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tunelab.config.base import Section
from tunelab.config.refs import CodeRef, DataPath, ModelRef, RunPath

StageName = Literal["sft", "pretrain", "dpo", "orpo", "simpo", "kto", "reward", "classify", "grpo", "distill",
                    "ppo", "selftrain", "token_classify", "multihead"]

PREFERENCE_STAGES = ("dpo", "orpo", "simpo", "kto")
"""Stages trained by tunelab.stages.preference; each reads the `preference:` section."""

DEFAULT_BETA = {"dpo": 0.1, "orpo": 0.1, "simpo": 2.0, "kto": 0.1}
"""Paper defaults for `preference.beta` when it is left null."""


class PreferenceCfg(Section):
    """Preference optimization (dpo / orpo / simpo / kto)."""

    loss: Literal["sigmoid", "ipo", "hinge"] = Field(
        "sigmoid", description="DPO loss type (stage dpo only): sigmoid = DPO, ipo = IPO, hinge = SLiC hinge.")
    beta: float | None = Field(
        None, gt=0, description="DPO/KTO beta, IPO tau, ORPO lambda, SimPO beta; null = the paper default "
        "(0.1; SimPO 2.0).")
    label_smoothing: float = Field(
        0.0, ge=0, lt=0.5, description="Probability a pair's label is flipped (conservative DPO; sigmoid and simpo).")
    gamma: float = Field(0.5, ge=0, description="SimPO target reward margin.")
    desirable_weight: float = Field(1.0, gt=0, description="KTO weight on desirable (label true) examples.")
    undesirable_weight: float = Field(1.0, gt=0, description="KTO weight on undesirable (label false) examples.")
    kto_kl: bool = Field(
        True, description="KTO: estimate the KL baseline from mismatched (prompt, completion) pairs of each "
        "batch (costs one more forward pass); false uses 0.")
    sft_weight: float = Field(
        0.0, ge=0, description="Stage dpo: weight of an SFT term, the token-mean negative log-likelihood of the "
        "chosen answers, added to the DPO/IPO/hinge loss (RPO; TRL's loss_type [..., 'sft'] with loss_weights). "
        "DPO alone only widens the chosen-rejected gap relative to the reference and can lower both; this keeps "
        "the chosen answers' likelihood rising. 0 = plain DPO.")
    precompute_ref: bool = Field(
        False, description="Compute the reference model's log-probs once before training (one pass over the data) "
        "instead of in every step.")

    def beta_for(self, stage: str) -> float:
        """The beta to use: the configured one, or the stage's paper default."""
        return self.beta if self.beta is not None else DEFAULT_BETA.get(stage, 0.1)


class RewardCfg(Section):
    """Reward modelling (stage reward)."""

    center_coef: float | None = Field(
        None, ge=0, description="Weight of mean((r_chosen + r_rejected)^2), keeping rewards centred on 0; "
        "null = off (TRL's center_rewards_coefficient, e.g. 0.01).")


class ClassifyCfg(Section):
    """Sequence classification (stage classify)."""

    mode: Literal["head", "label_tokens"] = Field(
        "head", description="head = a linear head on the last token's hidden state; label_tokens = score each "
        "label by the model's probability of writing it as the answer (restricted to the label set).")
    labels: list[str] | None = Field(
        None, description="The classes in order; null = the sorted distinct labels of the training data.")
    pooling: Literal["last", "mean"] = Field(
        "last", description="mode head: the vector the head reads, the last real token's hidden state (last) or "
        "the mean over the real tokens (mean; often better for a base model that was not tuned to summarise "
        "into its last token).")
    head_input: Literal["chat", "text"] = Field(
        "chat", description="mode head, messages data: chat = the prompt rendered with the chat template (system "
        "prompt included); text = the last user turn as raw text, so all of data.max_length goes to the document.")
    class_weights: Literal["none", "balanced"] | list[float] = Field(
        "none", description="Cross-entropy class weights: none, balanced (n / (k * count) per class, for "
        "imbalanced data) or one number per label.")

    @model_validator(mode="after")
    def _weights_match_labels(self) -> ClassifyCfg:
        if isinstance(self.class_weights, list) and self.labels is not None \
                and len(self.class_weights) != len(self.labels):
            raise ValueError(f"class_weights has {len(self.class_weights)} numbers but labels has "
                             f"{len(self.labels)}; give one weight per label")
        return self


class TokenClassifyCfg(Section):
    """Token classification, e.g. named entities (stage token_classify)."""

    scheme: Literal["auto", "BIO", "BIOES"] = Field(
        "auto", description="Tag scheme: BIO or BIOES. Span records ({text, spans}) are turned into tags in this "
        "scheme; CoNLL files and {tokens, tags} records keep their tags. auto = BIOES when the data has E-/S- "
        "tags, else BIO.")
    labels: list[str] | None = Field(
        None, description="Every tag in order (O, B-PER, I-PER, ...); null = O then the sorted tags of the data.")


class TaskHeadCfg(Section):
    """One task's head in a multihead run (its data is the data.train source with the same task name)."""

    task: str = Field(..., min_length=1, description="The data.train source's task name (its task:, else the "
                      "file's stem).")
    kind: Literal["classify", "regress", "tag", "lm"] = Field(
        ..., description="classify = a class per text ({text|messages, label}); regress = a number per text "
        "({text, value}); tag = a tag per word (token_classify data); lm = next-token loss on chat/SFT records "
        "through the model's own LM head.")
    loss_weight: float = Field(1.0, gt=0, description="Multiplies this task's mean loss in the training loss.")
    labels: list[str] | None = Field(None, description="classify / tag: the classes or tags in order; null = from "
                                     "the data.")
    pooling: Literal["last", "mean"] = Field("mean", description="classify / regress: the vector the head reads, "
                                             "the last real token's hidden state or the mean over real tokens.")
    scheme: Literal["auto", "BIO", "BIOES"] = Field("auto", description="tag: the tag scheme (as token_classify).")


class MultiheadCfg(Section):
    """Several tasks on one shared model (stage multihead): one head per task, each with its own loss weight."""

    heads: list[TaskHeadCfg] = Field(
        default_factory=list, description="One head per task, e.g. [{task: news, kind: classify}, {task: chat, "
        "kind: lm, loss_weight: 0.3}]; every data.train source's task needs one (and every head a source).")

    @model_validator(mode="after")
    def _one_head_per_task(self) -> MultiheadCfg:
        seen = [h.task for h in self.heads]
        twice = sorted({t for t in seen if seen.count(t) > 1})
        if twice:
            raise ValueError(f"heads: task {twice[0]!r} has more than one head; give each task one")
        return self

    def by_task(self) -> dict[str, TaskHeadCfg]:
        """The heads keyed by task name."""
        return {h.task: h for h in self.heads}


class DomainCfg(Section):
    """Unsupervised domain adaptation of a classifier (stage classify, mode head): align the features the head
    reads on labelled source data with those of unlabelled target-domain text."""

    target: DataPath = Field(..., description="Unlabelled target-domain texts: .json/.jsonl records with \"text\" "
                             "(or \"messages\": the last user turn); a label, if present, is never read.")
    method: Literal["dann", "mmd"] = Field(
        "dann", description="dann = a domain classifier on the pooled hidden states behind a gradient-reversal "
        "layer (Ganin et al. 2016); mmd = the squared maximum mean discrepancy between source and target "
        "features (Gaussian kernels; Long et al. 2015).")
    weight: float = Field(0.1, gt=0, description="Weight of the domain loss added to the classification loss.")
    hidden: int = Field(256, gt=0, description="dann: hidden units of the domain classifier (one ReLU layer).")
    batch_size: int | None = Field(None, gt=0, description="Target texts per training step; null = train.batch_size.")


def one_weight_per_reward(cfg):
    """A section with `rewards` and `reward_weights` (grpo, selftrain): one weight per reward function."""
    if cfg.reward_weights is not None and len(cfg.reward_weights) != len(cfg.rewards):
        raise ValueError(f"reward_weights has {len(cfg.reward_weights)} numbers for {len(cfg.rewards)} "
                         "rewards; give one weight per reward function")
    return cfg


class GrpoCfg(Section):
    """Group Relative Policy Optimization (stage grpo)."""

    group_size: int = Field(4, ge=2, description="Completions sampled per prompt; advantages are z-scores within "
                            "each group.")
    max_new_tokens: int = Field(64, gt=0, description="Longest sampled completion, in tokens.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the completions.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling threshold.")
    rewards: list[CodeRef] = Field(
        default_factory=lambda: ["builtin:answer_match"], min_length=1,
        description="Reward functions, summed (times reward_weights): builtin:answer_match, builtin:correct_number, "
        "builtin:correct_final_number, builtin:format_regex, builtin:length, or file.py:function for your own: "
        "tunelab's f(completions, answers, prompts) or TRL's f(completions, **kwargs) (keywords prompts, "
        "completions, completion_ids and the record's other columns).")
    reward_weights: list[float] | None = Field(None, description="One weight per reward function; null = all 1.")
    format_regex: str = Field(r"\\boxed\{.+?\}", description="builtin:format_regex gives 1 when the completion "
                              "contains a match of this regular expression, else 0.")
    length_target: int = Field(200, gt=0, description="builtin:length gives 1 up to this many characters, falling "
                               "linearly to 0 at twice as many.")
    beta: float = Field(0.04, ge=0, description="Weight of the k3 KL penalty to the reference model (0 = no "
                        "reference).")
    clip_eps: float = Field(0.2, gt=0, lt=1, description="PPO clip range (lower).")
    clip_eps_high: float | None = Field(None, gt=0, description="Upper clip range (DAPO clip-higher); null = clip_eps.")
    reduction: Literal["sequence", "token", "dr_grpo"] = Field(
        "sequence", description="How token losses are averaged: sequence (GRPO), token (DAPO), dr_grpo.")
    scale_rewards: bool = Field(True, description="Divide advantages by the group's reward std (false = Dr. GRPO).")

    @model_validator(mode="after")
    def _one_weight_per_reward(self) -> GrpoCfg:
        return one_weight_per_reward(self)


class DistillCfg(Section):
    """Knowledge distillation from a teacher's logits (stage distill)."""

    teacher: ModelRef = Field(..., description="Teacher model: an alias, a local HF folder, a cached hub id, or a tunelab "
                         "run folder (its trained model, adapters merged). Must share the student's vocabulary.")
    temperature: float = Field(2.0, gt=0, description="Softening temperature of both distributions.")
    alpha: float = Field(0.5, ge=0, le=1, description="Weight of the distillation term; 1 - alpha weighs the "
                         "cross-entropy on the data's answers.")
    divergence: Literal["forward", "reverse", "jsd"] = Field(
        "forward", description="forward = KL(teacher || student), reverse = KL(student || teacher), jsd = "
        "generalized Jensen-Shannon.")
    jsd_beta: float = Field(0.5, gt=0, lt=1, description="Mixture weight of jsd.")


class PpoCfg(Section):
    """PPO from a trained reward model (stage ppo)."""

    reward_model: RunPath = Field(..., description="A reward run folder (stage reward) with the same tokenizer; its "
                              "score of each prompt + completion is the reward.")
    max_new_tokens: int = Field(64, gt=0, description="Longest sampled completion, in tokens.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling threshold.")
    kl_coef: float = Field(0.05, ge=0, description="Per-token penalty on KL(policy || reference) in the reward.")
    kl_estimator: Literal["k1", "k2", "k3"] = Field("k1", description="KL estimator of the penalty.")
    gamma: float = Field(1.0, gt=0, le=1, description="GAE discount.")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda.")
    clip_eps: float = Field(0.2, gt=0, lt=1, description="Policy clip range.")
    vf_coef: float = Field(0.1, ge=0, description="Weight of the value (critic) loss.")
    vf_clip: float | None = Field(0.2, gt=0, description="Value clip range; null = plain squared error.")
    whiten_advantages: bool = Field(True, description="Normalize advantages over each batch's tokens.")


class SelftrainCfg(Section):
    """Self-training (stage selftrain): pseudo-labelling an unlabelled pool, or rejection-sampling fine-tuning."""

    mode: Literal["pseudo_label", "rejection"] = Field(
        "pseudo_label", description="pseudo_label = a classifier (the classify stage, `classify:` section) trained "
        "on data.train labels selftrain.unlabelled, keeps confident predictions and retrains, for `rounds` rounds; "
        "rejection = sample answers to data.train prompts, keep those the rewards accept, SFT on them.")
    unlabelled: DataPath | None = Field(
        None, description="pseudo_label: .json/.jsonl file of unlabelled inputs, {\"text\": ...} or "
        "{\"messages\": [...]} records like data.train without the label (a `label`, if present, is never "
        "trained on; it only scores the pseudo-labels).")
    threshold: float = Field(
        0.9, ge=0, le=1, description="pseudo_label: keep a pool prediction when its top class probability is at "
        "least this.")
    balance: bool = Field(
        False, description="pseudo_label: keep the same number per predicted class, as many as the class with "
        "the fewest confident predictions has (the most confident ones; none when a class has none), so one easy "
        "class cannot take over the pseudo-labels.")
    rounds: int = Field(
        2, ge=1, description="pseudo_label: pseudo-labelling rounds after round 0 (the labelled-only model); each "
        "retrains from the base model on data.train + the pool predictions kept by the previous round's model.")
    samples_per_prompt: int = Field(4, gt=0, description="rejection: completions sampled per training prompt.")
    max_new_tokens: int = Field(128, gt=0, description="rejection: longest sampled completion, in tokens.")
    temperature: float = Field(0.8, gt=0, description="rejection: sampling temperature.")
    top_p: float = Field(1.0, gt=0, le=1, description="rejection: nucleus sampling threshold.")
    rewards: list[CodeRef] = Field(
        default_factory=lambda: ["builtin:answer_match"], min_length=1,
        description="rejection: reward functions that judge the samples (as grpo.rewards), summed with "
        "reward_weights.")
    reward_weights: list[float] | None = Field(None, description="rejection: one weight per reward function; "
                                               "null = all 1.")
    format_regex: str = Field(r"\\boxed\{.+?\}", description="rejection: pattern of builtin:format_regex.")
    length_target: int = Field(200, gt=0, description="rejection: characters before builtin:length starts to fall.")
    min_reward: float = Field(1.0, description="rejection: keep only samples whose summed reward is at least this.")
    keep: Literal["best", "all"] = Field("best", description="rejection: best = the top sample per prompt; all = "
                                         "every sample reaching min_reward.")

    @model_validator(mode="after")
    def _one_weight_per_reward(self) -> SelftrainCfg:
        return one_weight_per_reward(self)
