"""The `method:` section: one config class per way of choosing what trains, discriminated by `name`."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from tunelab.config.base import Section
from tunelab.config.refs import ModelRef

Targets = Literal["all-linear", "attention", "mlp"] | list[str]


def _train_vision():
    return Field(False, description="Vision models: train the vision tower too (LoRA: adapters on its linear layers; "
                 "full/freeze: its weights). Off by default: a pretrained encoder already sees well, and its "
                 "activations cost most of a VLM's memory. Text models: must stay false.")


def _train_projector():
    return Field(False, description="Vision models: train the projector (connector) between vision tower and "
                 "language model in full (LoRA: as modules_to_save). Turn it on for a projector trained from scratch "
                 "(LLaVA-style connector training). Text models: must stay false.")


class FullCfg(Section):
    """Train every weight (of a vision model: the language model, plus what train_vision/train_projector add)."""

    name: Literal["full"] = "full"
    train_vision: bool = _train_vision()
    train_projector: bool = _train_projector()


class FreezeCfg(Section):
    """Train a chosen part of the model and freeze the rest (no new parameters)."""

    name: Literal["freeze"] = "freeze"
    layers: int = Field(2, ge=0, description="Train the top N decoder layers (0 = none).")
    patterns: list[str] = Field(
        default_factory=list,
        description="Also train parameters whose name matches one of these regular expressions (re.search).",
    )
    head: bool = Field(True, description="Train the output head (lm_head / score / classifier).")
    embeddings: bool = Field(False, description="Train the input embeddings (tied heads train with them).")
    train_vision: bool = _train_vision()
    train_projector: bool = _train_projector()

    @model_validator(mode="after")
    def _something_trains(self):
        if not (self.layers or self.patterns or self.head or self.embeddings):
            raise ValueError("nothing would train; set layers > 0, patterns, head=true or embeddings=true")
        return self


class LoraCfg(Section):
    """Low-rank adapters on linear layers (Hu et al. 2021), through PEFT."""

    name: Literal["lora"] = "lora"
    r: int = Field(16, gt=0, description="Rank of the update; trainable parameters grow linearly with it.")
    alpha: float = Field(32, gt=0, description="Scaling numerator: the update is scaled by alpha / r.")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the adapter input.")
    target_modules: Targets = Field(
        "all-linear",
        description="Which linear layers get adapters: all-linear, attention, mlp, or a list of module names.",
    )
    dora: bool = Field(False, description="DoRA: learn a magnitude per output and a LoRA direction (arXiv:2402.09353).")
    rslora: bool = Field(False, description="rsLoRA: scale by alpha / sqrt(r), stable at high rank (arXiv:2312.03732).")
    init: Literal["default", "gaussian", "pissa", "loftq"] = Field(
        "default",
        description="Adapter initialisation: default (B = 0), gaussian, pissa (principal singular vectors, "
        "arXiv:2404.02948) or loftq (quantization-aware SVD, arXiv:2310.08659; computed locally).",
    )
    lora_plus_ratio: float | None = Field(
        None, gt=0, description="LoRA+: B matrices get lr x ratio (arXiv:2402.12354; 16 is typical)."
    )
    modules_to_save: list[str] = Field(
        default_factory=list, description="Modules trained in full next to the adapters (e.g. lm_head, score)."
    )
    train_vision: bool = _train_vision()
    train_projector: bool = _train_projector()


class QLoraCfg(LoraCfg):
    """LoRA on a 4-bit quantized base (Dettmers et al. 2023, arXiv:2305.14314) through bitsandbytes."""

    name: Literal["qlora"] = "qlora"  # type: ignore[assignment]
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type; nf4 = NormalFloat4.")
    double_quant: bool = Field(True, description="Quantize the quantization constants too (saves ~0.4 bit/weight).")
    compute_dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16", description="Dtype the 4-bit weights are dequantized to for each matmul."
    )


class AdapterCfg(Section):
    """Bottleneck adapters (Houlsby et al. 2019, arXiv:1902.00751; Pfeiffer et al. 2020, arXiv:2005.00247)."""

    name: Literal["adapter"] = "adapter"
    placement: Literal["houlsby", "pfeiffer"] = Field(
        "pfeiffer", description="houlsby = after attention and after the MLP; pfeiffer = after the MLP only."
    )
    reduction_factor: int = Field(16, gt=0, description="Bottleneck width = hidden size / reduction_factor.")
    activation: Literal["relu", "gelu", "silu"] = Field("relu", description="Non-linearity inside the bottleneck.")


class IA3Cfg(Section):
    """(IA)^3: learned vectors rescaling keys, values and MLP activations (Liu et al. 2022, arXiv:2205.05638)."""

    name: Literal["ia3"] = "ia3"
    target_modules: list[str] = Field(["k_proj", "v_proj", "down_proj"], description="Modules whose output "
                                      "(or input, for feedforward_modules) is rescaled.")
    feedforward_modules: list[str] = Field(["down_proj"], description="Targets rescaled on their input side.")


class PrefixCfg(Section):
    """Prefix tuning (Li & Liang 2021, arXiv:2101.00190): trained key/value prefixes at every layer, produced
    by an MLP reparametrisation during training."""

    name: Literal["prefix"] = "prefix"
    num_virtual_tokens: int = Field(16, gt=0, description="Prefix length.")
    encoder_hidden_size: int = Field(256, gt=0, description="Width of the reparametrisation MLP.")


class PTuningV2Cfg(Section):
    """P-tuning v2 (Liu et al. 2022, arXiv:2110.07602): deep prompts, free key/value prefixes at every layer."""

    name: Literal["ptuning_v2"] = "ptuning_v2"
    num_virtual_tokens: int = Field(16, gt=0, description="Prompt length at each layer.")


class PromptCfg(Section):
    """Prompt tuning (Lester et al. 2021, arXiv:2104.08691): trained input embeddings before the prompt."""

    name: Literal["prompt"] = "prompt"
    num_virtual_tokens: int = Field(16, gt=0, description="Number of soft-prompt tokens.")
    init_text: str | None = Field(
        None, description="Initialise the soft prompt from this text's token embeddings; null = random."
    )
    tokenizer: ModelRef | None = Field(
        None, description="Model name whose tokenizer encodes init_text; null = the base model's own folder."
    )


class PTuningCfg(Section):
    """P-tuning (Liu et al. 2021, arXiv:2103.10385): soft prompt produced by a small prompt encoder."""

    name: Literal["ptuning"] = "ptuning"
    num_virtual_tokens: int = Field(16, gt=0, description="Number of soft-prompt tokens.")
    encoder: Literal["mlp", "lstm"] = Field("mlp", description="Prompt encoder architecture.")
    encoder_hidden_size: int = Field(128, gt=0, description="Prompt encoder width.")


MethodCfg = Annotated[
    FullCfg | FreezeCfg | LoraCfg | QLoraCfg | AdapterCfg | IA3Cfg | PrefixCfg | PTuningV2Cfg | PromptCfg | PTuningCfg,
    Field(discriminator="name"),
]
