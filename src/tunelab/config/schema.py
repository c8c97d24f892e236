"""The typed run configuration: the single source of truth for YAML, CLI, Python API and studio forms.

Every field is documented where it is declared; `tunelab train --help` and
`tunelab config schema` render those descriptions.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tunelab.config.base import Section
from tunelab.config.data import DataCfg
from tunelab.config.methods import FullCfg, LoraCfg, MethodCfg
from tunelab.config.optim import OptimCfg
from tunelab.config.parallel import ParallelCfg
from tunelab.config.refs import CheckpointPath, ModelRef, OutputPath, TemplateRef
from tunelab.config.speed import SpeedCfg
from tunelab.config.stages import (
    ClassifyCfg,
    DistillCfg,
    DomainCfg,
    GrpoCfg,
    MultiheadCfg,
    PpoCfg,
    PreferenceCfg,
    RewardCfg,
    SelftrainCfg,
    StageName,
    TokenClassifyCfg,
)


class ModelCfg(Section):
    name: ModelRef = Field(
        "smollm2-135m",
        description="Base model: an alias (smollm2-135m, tiny-llama, tiny-qwen2), a local HF folder, "
        "a .gguf file, or a hub id already in the local cache (never downloaded).",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weight dtype; auto = bfloat16 on a GPU that supports it and on a CPU with bf16 "
        "matrix units (Intel AMX, AVX512-BF16; TUNELAB_CPU_BF16=0 keeps float32), float32 on other CPUs."
    )
    trust_remote_code: bool = Field(
        False, description="Run Python code shipped with the model folder. Off unless you trust the source."
    )
    chat_template: TemplateRef | None = Field(
        None,
        description="Chat template: null = the tokenizer's own, else a named one (chatml, llama3, qwen, "
        "alpaca, vicuna) or a path to a .jinja file. The template used is stored with the run.",
    )


MAX_EPOCHS = 10_000
"""More passes than any fine-tune needs; a larger value is a typo (or .inf) that would overflow the step count."""


class TrainCfg(Section):
    epochs: float = Field(3, gt=0, le=MAX_EPOCHS, description="Passes over the training data (fractions allowed).")
    max_steps: int | None = Field(None, gt=0, description="Stop after this many optimizer steps (overrides epochs).")
    batch_size: int = Field(8, gt=0, description="Samples per micro-batch.")
    grad_accum: int = Field(1, gt=0, description="Micro-batches per optimizer step.")
    lr: float = Field(2.0e-4, gt=0, description="Peak learning rate.")
    scheduler: Literal["cosine", "linear", "constant"] = Field("cosine", description="Decay after warmup.")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Fraction of steps spent warming up linearly.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW decoupled weight decay (never on norms or biases).")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Clip the global gradient norm; null = no clipping.")
    seed: int = Field(42, ge=0, le=2**32 - 1, description="Seeds data order, splits, dropout and initialisation "
                      "(0 .. 2**32 - 1, the range numpy and torch accept).")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward to save memory.")
    eval_every: int | None = Field(None, gt=0, description="Evaluate every N steps (and always at the end).")
    save_every: int | None = Field(None, gt=0, description="Write a resumable checkpoint every N steps.")
    save_total_limit: int | None = Field(3, gt=0, description="Keep at most this many step checkpoints.")
    early_stopping_patience: int | None = Field(
        None, gt=0, description="Stop after N evaluations without improving validation loss; keep the best."
    )
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Cross-entropy label smoothing.")
    log_every: int = Field(1, gt=0, description="Log metrics every N steps.")
    resume: Literal["auto", "never"] | CheckpointPath = Field(
        "never", description="auto = continue the latest checkpoint in output_dir; or a checkpoint path."
    )
    device: Literal["auto", "cpu", "cuda", "mps"] = Field(
        "auto", description="Where to train; auto picks CUDA if present (mps = Apple GPU, where torch supports it).")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="Mixed precision: bf16 autocast; fp16 autocast with dynamic loss scaling (skipped "
        "steps logged); fp32; auto = bf16 on GPUs that have it, fp16 on older GPUs, bf16 on CPUs with bf16 "
        "matrix units (as model.dtype), fp32 on other CPUs and mps.")
    threads: int | None = Field(
        None, gt=0, description="CPU threads for torch (torch.set_num_threads). null = the TUNELAB_THREADS or "
        "OMP_NUM_THREADS environment variable, else the cores this process may use (CPU affinity, cgroup quota).")
    report_to: list[Literal["jsonl", "tensorboard", "swanlab", "wandb", "mlflow"]] = Field(
        default_factory=lambda: ["jsonl"],
        description="Trackers, all offline inside the run folder; jsonl (metrics.jsonl) is always written.")
    report: bool = Field(True, description="Write report.html (loss curves, evals) at the end of training.")
    speed: SpeedCfg = Field(default_factory=SpeedCfg, description="Fast paths (tunelab.kernels) used in training.")


class RunCfg(Section):
    """One training run. `output_dir` becomes the run folder."""

    model: ModelCfg = Field(default_factory=ModelCfg)
    data: DataCfg
    method: MethodCfg = Field(default_factory=LoraCfg)
    stage: StageName = Field(
        "sft", description="How the model learns: sft, pretrain (raw text), dpo / orpo / simpo / kto (preferences), "
        "reward (a pairwise reward model), classify (sequence classification), grpo (RL from reward functions), "
        "distill (from a teacher's logits), ppo (RL from a reward model), selftrain (pseudo-label self-training of a "
        "classifier, or SFT on its own filtered samples), token_classify (a tag per word: NER, BIO/BIOES), multihead (several tasks, one "
        "head each, on a shared model).")
    train: TrainCfg = Field(default_factory=TrainCfg)
    optim: OptimCfg = Field(default_factory=OptimCfg)
    preference: PreferenceCfg = Field(default_factory=PreferenceCfg, description="Stages dpo, orpo, simpo, kto.")
    reward: RewardCfg = Field(default_factory=RewardCfg, description="Stage reward.")
    classify: ClassifyCfg = Field(default_factory=ClassifyCfg, description="Stage classify.")
    grpo: GrpoCfg = Field(default_factory=GrpoCfg, description="Stage grpo.")
    distill: DistillCfg | None = Field(None, description="Stage distill (needs distill.teacher).")
    ppo: PpoCfg | None = Field(None, description="Stage ppo (needs ppo.reward_model).")
    selftrain: SelftrainCfg = Field(default_factory=SelftrainCfg, description="Stage selftrain.")
    token_classify: TokenClassifyCfg = Field(default_factory=TokenClassifyCfg, description="Stage token_classify.")
    multihead: MultiheadCfg = Field(default_factory=MultiheadCfg, description="Stage multihead.")
    domain: DomainCfg | None = Field(None, description="Domain adaptation to unlabelled target text (stage "
                                     "classify, mode head); null = off.")
    parallel: ParallelCfg = Field(default_factory=ParallelCfg, description="Several processes (torchrun): "
                                  "ddp or fsdp; ignored by a single-process run.")
    output_dir: OutputPath = Field("runs/my-run", description="The run folder to write.")



__all__ = [
    "ClassifyCfg",
    "DataCfg",
    "DistillCfg",
    "DomainCfg",
    "FullCfg",
    "GrpoCfg",
    "LoraCfg",
    "MethodCfg",
    "ModelCfg",
    "MultiheadCfg",
    "OptimCfg",
    "PpoCfg",
    "PreferenceCfg",
    "RewardCfg",
    "RunCfg",
    "Section",
    "SelftrainCfg",
    "TokenClassifyCfg",
    "TrainCfg",
]
