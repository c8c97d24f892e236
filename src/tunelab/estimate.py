"""Estimate a run's memory and time before it starts, without loading any weights.

The model is built as a skeleton on PyTorch's `meta` device from its config (no storage is
allocated), the method is applied there, and the counts come from that skeleton. Memory is
weights + gradients + optimizer states + activations; time is training FLOPs divided by an
assumed throughput for the device kind. Every formula is written next to the number it makes
(see docs/studio.md, "Estimate before you start").

    from tunelab.config import load_config
    from tunelab.estimate import estimate_run
    est = estimate_run(load_config("sft.yaml"), n_train_samples=5000, mean_tokens=300.0, device="cpu")
    est["memory"]["total_gib"], est["time"]["seconds"]
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

import torch

from tunelab.config import RunCfg
from tunelab.methods import count_parameters, get_method
from tunelab.utils.cpu_bf16 import cpu_bf16, native_bf16_matmul

GIB = 1024 ** 3

# Known config of SmolLM2-135M-Instruct, used when its converted folder is not cached yet.
SMOLLM2_135M = {"vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                "num_attention_heads": 9, "num_key_value_heads": 3, "max_position_embeddings": 8192,
                "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "tie_word_embeddings": True,
                "bos_token_id": 1, "eos_token_id": 2}

# Assumed sustained training throughput (TFLOP/s) per device kind, counted on the tokens the FLOP formula
# counts (a sample's own tokens).
#   cpu:  0.08 in float32, measured on 2 cores of a Xeon (more cores run faster, so this is a floor): the bf16
#         rate below divided by the float32/bf16 speed ratio of `tunelab train` on the same machine (184 vs 261
#         tok/s, docs/speed.md "On a CPU").
#   cuda: 150, a generic modern GPU; docs/speed.md measures HF+PEFT at MFU 0.15 of an H100's 989.
#   h100: 367, docs/speed.md's tunelab fast LoRA row (MFU 0.371 x 989 TFLOP/s).
DEVICE_TFLOPS: dict[str, float] = {"cpu": 0.08, "cuda": 150.0, "h100": 367.0}
# bfloat16 on a CPU with bf16 matrix units (utils.cpu_bf16; `auto` picks it there): examples/sft_lora.yaml's
# epoch on those 2 cores, 171,709 tokens x 0.567 GFLOP in 780 s of training.
CPU_BF16_TFLOPS = 0.12

# Optimizer state bytes per trainable parameter (or a function of the parameter's shape).
OPTIM_BYTES: dict[str, Callable[[tuple[int, ...]], float]] = {
    "adamw": lambda shape: 8.0 * math.prod(shape),             # exp_avg + exp_avg_sq in fp32
    "galore_adamw": lambda shape: 8.0 * math.prod(shape),      # upper bound: projection makes it smaller
    "badam": lambda shape: 8.0 * math.prod(shape),             # upper bound: only the active block holds states
    "adamw_8bit": lambda shape: 2.0 * math.prod(shape),        # two 8-bit states
    "paged_adamw_8bit": lambda shape: 2.0 * math.prod(shape),
    # Adafactor: factored second moment (one fp32 row + one column vector per matrix), no momentum.
    "adafactor": lambda shape: 4.0 * (shape[0] + shape[1]) if len(shape) == 2 else 4.0 * math.prod(shape),
}

_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
ADAPTER_METHODS = ("lora", "qlora", "adapter", "ia3", "prefix", "ptuning_v2", "prompt", "ptuning")


# Methods whose apply() needs real weights, and the method that has the same trainable parameters on meta:
# qlora quantizes the base (bitsandbytes copies the data) and then adds exactly lora's adapters.
META_STANDINS: dict[str, str] = {"qlora": "lora"}


# transformers imports its model classes lazily, and that is not thread-safe: the studio serves
# estimates from a thread pool, so skeletons are built one at a time.
_BUILD_LOCK = threading.Lock()


class EstimateError(ValueError):
    """The model's architecture could not be read without loading it; the message says what to do."""


def model_config(name: str):
    """The transformers config of a model name, read from config files only (never weights)."""
    from transformers import AutoConfig, LlamaConfig

    from tunelab.models import MODEL_ALIASES, TINY_MODELS, ModelNotFound, resolve_model
    from tunelab.models.gguf import cache_root, smollm2_gguf_path
    from tunelab.models.tiny import tiny_config

    if name in TINY_MODELS:
        return tiny_config(name)
    if name in MODEL_ALIASES:
        try:  # gguf_as_hf_dir's folders are named <gguf stem>-<hash>
            stem = smollm2_gguf_path().stem
        except ModelNotFound:
            stem = "SmolLM2-135M-Instruct"
        cached = sorted((cache_root() / "gguf").glob(f"{stem}-*/config.json"), key=lambda p: p.stat().st_mtime)
        if cached:
            return AutoConfig.from_pretrained(str(cached[-1].parent), trust_remote_code=False)
        return LlamaConfig(**SMOLLM2_135M)
    try:
        src = resolve_model(name)
    except ModelNotFound as e:
        raise EstimateError(f"model.name: {e}") from None
    if src.kind == "run":  # a finished run as the base: its root model has the architecture
        from tunelab.models.loader import root_model

        return model_config(root_model(name))
    if src.kind == "hf_dir" or src.kind == "hub":
        try:
            return AutoConfig.from_pretrained(src.path, trust_remote_code=False)
        except (OSError, ValueError) as e:
            raise EstimateError(f"model.name: cannot read the config of {name!r} ({e})") from None
    raise EstimateError(f"model.name: {name!r} is a {src.kind} file; estimate needs an HF folder with config.json")


def meta_model(cfg: RunCfg):
    """The model skeleton on the meta device with the method applied: shapes and requires_grad, no storage."""
    with _BUILD_LOCK:
        from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

        config = model_config(cfg.model.name)
        vision = getattr(config, "vision_config", None) is not None  # an image-text-to-text model (e.g. Llava)
        with torch.device("meta"):
            model = (AutoModelForImageTextToText if vision else AutoModelForCausalLM).from_config(config)
        config = config.get_text_config()  # the decoder's shapes drive activations and the head
        name = META_STANDINS.get(cfg.method.name, cfg.method.name)
        try:
            return get_method(name).apply(model, cfg.method), config
        except (NotImplementedError, RuntimeError) as e:  # a method that needs real weights (data-dependent init)
            raise EstimateError(f"method.name: {cfg.method.name} cannot be applied to a weightless model "
                                f"({e})") from None


def _weight_dtype(cfg: RunCfg, device: str) -> str:
    if cfg.model.dtype != "auto":
        return cfg.model.dtype
    return "bfloat16" if device != "cpu" or cpu_bf16() else "float32"  # as models.pick_dtype decides


def _unique_params(model) -> list[torch.nn.Parameter]:
    seen: set[int] = set()
    out = []
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def _activation_values_per_token_layer(config) -> int:
    """Values saved for backward per token per decoder layer (pre-norm block with a gated MLP, SDPA attention).

    norm inputs/outputs 4h, q + k + v (h + 2·kv), attention output and o_proj input 2h, residual h,
    gate/up outputs 2·I, activation and product 2·I  ->  7h + 2·kv + 4·I. SDPA/flash attention keeps
    no (S × S) score matrix, so there is no quadratic term (cf. Korthikanti et al. 2022, arXiv:2205.05198).
    """
    h = config.hidden_size
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    kv_dim = kv * (getattr(config, "head_dim", None) or h // heads)
    inter = getattr(config, "intermediate_size", None) or 4 * h
    return 7 * h + 2 * kv_dim + 4 * inter


def activation_bytes(config, batch_size: int, seq_len: int, act_bytes: int, checkpointing: bool) -> dict:
    """Activation memory for one micro-batch of batch_size × seq_len tokens.

    layers: without checkpointing every layer keeps `_activation_values_per_token_layer` values per
    token; with it, each layer keeps only its input (h values) and one layer's activations exist at a
    time during recomputation. logits: B·S·V in the compute dtype plus an fp32 copy for the loss.
    """
    tokens = batch_size * seq_len
    per_layer = _activation_values_per_token_layer(config)
    n_layers = config.num_hidden_layers
    if checkpointing:
        layers = tokens * act_bytes * (n_layers * config.hidden_size + per_layer)
    else:
        layers = tokens * act_bytes * n_layers * per_layer
    logits = tokens * config.vocab_size * (act_bytes + 4)
    return {"layers": int(layers), "logits": int(logits), "total": int(layers + logits)}


def _steps(cfg: RunCfg, n_train_samples: int | None,
           mean_tokens: float | None = None) -> tuple[int | None, float | None]:
    """(optimizer steps, samples in training) from max_steps, or epochs × ceil(batch units / units per step);
    a unit is a sample, or with data.packing and a known `mean_tokens` a packed row of data.max_length."""
    per_step = cfg.train.batch_size * cfg.train.grad_accum  # one process; torchrun multiplies it by its ranks
    samples = None
    if n_train_samples is not None:
        samples = n_train_samples
        if cfg.data.max_samples:
            samples = min(samples, cfg.data.max_samples)
        if cfg.data.eval is None:
            samples = samples - math.floor(samples * cfg.data.val_size)
    if cfg.train.max_steps:
        return cfg.train.max_steps, samples
    if samples is None:
        return None, None
    units = samples
    if cfg.data.packing and mean_tokens is not None:
        units = math.ceil(samples * min(mean_tokens, cfg.data.max_length) / cfg.data.max_length)
    return math.ceil(cfg.train.epochs * math.ceil(units / per_step)), samples


def estimate_run(cfg: RunCfg, n_train_samples: int | None, mean_tokens: float | None, device: str) -> dict:
    """Parameters, memory (bytes and GiB) and time of a run before it starts; no weights are loaded.

    `device` is a key of DEVICE_TFLOPS (cpu, cuda, h100) or "auto". Unknown `n_train_samples`
    leaves the step count unknown unless train.max_steps is set; unknown `mean_tokens` assumes
    every sample fills data.max_length (an upper bound). Packed rows always fill max_length; with a known
    `mean_tokens` a packed run has as many steps as its rows need.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device not in DEVICE_TFLOPS:
        raise EstimateError(f"device: unknown device kind {device!r}; choose from auto, {', '.join(DEVICE_TFLOPS)}")
    model, config = meta_model(cfg)
    trainable, total = count_parameters(model)
    dtype = _weight_dtype(cfg, device)
    wbytes = _DTYPE_BYTES[dtype]
    method = cfg.method.name
    adapter = method in ADAPTER_METHODS
    params = _unique_params(model)

    # Weights: the frozen base in the model dtype (4-bit for qlora's linear weights: 0.5 byte + ~3% for
    # the quantization constants); adapter parameters in fp32; full/freeze train in the model dtype.
    frozen = [p for p in params if not p.requires_grad]
    if method == "qlora":
        quantized = sum(p.numel() for p in frozen if p.dim() == 2 and p.shape[0] != config.vocab_size)
        base_bytes = quantized * 0.516 + (sum(p.numel() for p in frozen) - quantized) * wbytes
    else:
        base_bytes = sum(p.numel() for p in frozen) * wbytes
    train_bytes_per = 4 if adapter else wbytes
    weights = base_bytes + trainable * train_bytes_per
    grads = trainable * train_bytes_per

    optim = cfg.optim.name
    if optim == "auto":
        optim = "paged_adamw_8bit" if method == "qlora" and device != "cpu" else "adamw"
    states = sum(OPTIM_BYTES[optim](tuple(p.shape)) for p in params if p.requires_grad)

    n_tokens = cfg.data.max_length if cfg.data.packing or mean_tokens is None else min(mean_tokens, cfg.data.max_length)
    act = activation_bytes(config, cfg.train.batch_size, cfg.data.max_length, wbytes,
                           cfg.train.gradient_checkpointing)
    total_bytes = weights + grads + states + act["total"]

    # Time: FLOPs per trained token = forward 2·N + activation gradients 2·N + weight gradients 2·trainable,
    # i.e. 6·N for full training and ~4·N for adapters; gradient checkpointing adds one forward (2·N).
    steps, samples = _steps(cfg, n_train_samples, mean_tokens)
    tokens_per_step = cfg.train.batch_size * cfg.train.grad_accum * n_tokens
    flops_per_token = 4 * total + 2 * trainable
    if cfg.train.gradient_checkpointing:
        flops_per_token += 2 * total
    train_tokens = steps * tokens_per_step if steps is not None else None
    flops = train_tokens * flops_per_token if train_tokens is not None else None
    native_bf16 = device == "cpu" and dtype == "bfloat16" and native_bf16_matmul()
    tflops = CPU_BF16_TFLOPS if native_bf16 else DEVICE_TFLOPS[device]
    seconds = flops / (tflops * 1e12) if flops is not None else None

    return {
        "model": cfg.model.name, "method": method, "device": device, "dtype": dtype, "optimizer": optim,
        "params": {"total": total, "trainable": trainable, "trainable_pct": 100.0 * trainable / total},
        "memory": {
            "weights_bytes": int(weights), "gradients_bytes": int(grads), "optimizer_bytes": int(states),
            "activations_bytes": act["total"], "activations": act,
            "batch_size": cfg.train.batch_size, "max_length": cfg.data.max_length,
            "gradient_checkpointing": cfg.train.gradient_checkpointing,
            "total_bytes": int(total_bytes), "total_gib": total_bytes / GIB,
        },
        "time": {
            "train_samples": samples, "steps": steps, "tokens_per_step": tokens_per_step,
            "mean_tokens": n_tokens, "sample_tokens": mean_tokens, "packing": cfg.data.packing,
            "train_tokens": train_tokens, "flops_per_token": flops_per_token,
            "flops": flops, "assumed_tflops": tflops, "seconds": seconds,
        },
    }


def format_estimate(est: dict) -> str:
    """A few human lines for the CLI and the studio."""
    p, m, t = est["params"], est["memory"], est["time"]
    def gib(b: float) -> str:
        return f"{b / GIB:.2f} GiB"

    lines = [
        f"params: {p['total']:,} total, {p['trainable']:,} trainable ({p['trainable_pct']:.2f}%)",
        (f"memory ({est['device']}, {est['dtype']}, {est['optimizer']}): weights {gib(m['weights_bytes'])}, "
        f"gradients {gib(m['gradients_bytes'])}, optimizer {gib(m['optimizer_bytes'])}, "
        f"activations {gib(m['activations_bytes'])} (batch {m['batch_size']} x {m['max_length']}"
        f"{', checkpointed' if m['gradient_checkpointing'] else ''}) = {m['total_gib']:.2f} GiB"),
    ]
    if t["seconds"] is None:
        lines.append("time: unknown (give the dataset size or set train.max_steps)")
    else:
        lines.append(f"time: {t['steps']:,} steps x {t['tokens_per_step']:,.0f} tokens, {t['flops']:.3g} FLOPs "
                     f"at {t['assumed_tflops']:g} TFLOP/s assumed = {_duration(t['seconds'])}")
    if t.get("sample_lengths"):
        mean = f"{t['sample_tokens']:,.0f} tokens" if t.get("sample_tokens") else "unknown"
        packed = f", packed into rows of {m['max_length']:,}" if t.get("packing") else ""
        lines.append(f"sample length: {mean} ({t['sample_lengths']}){packed}")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds < 1:
        return "< 1 s"
    if seconds < 90:
        return f"~{seconds:.0f} s"
    if seconds < 5400:
        return f"~{seconds / 60:.0f} min"
    return f"~{seconds / 3600:.1f} h"


def measure_mean_tokens(cfg: RunCfg, sample: int = 2000) -> tuple[float, int]:
    """Mean tokens per training sample (each cut at data.max_length) as `tunelab train` would tokenize them:
    the model's tokenizer and chat template over up to `sample` records of the config's SFT files, evenly spread.

    Returns (mean, records measured). Raises EstimateError when that is not possible here (another stage, a
    non-file source, a tokenizer that is not on this machine, records that do not parse), so the caller can
    fall back to data.max_length and say why.
    """
    from pathlib import Path

    from tunelab.data.inspect import inspect_data
    from tunelab.data.sources import read_any
    from tunelab.data.templates import resolve_template
    from tunelab.models.loader import is_vision_model, load_tokenizer

    if cfg.stage != "sft":
        raise EstimateError(f"stage {cfg.stage}: sample lengths are measured for sft data only")
    try:
        if is_vision_model(cfg.model.name):
            raise EstimateError("a vision model's samples are measured with their images: `tunelab data inspect`")
        tokenizer = load_tokenizer(cfg.model.name, trust_remote_code=cfg.model.trust_remote_code)
        template = resolve_template(tokenizer, cfg.model.chat_template)
    except EstimateError:
        raise
    except Exception as e:  # noqa: BLE001 - any reason the tokenizer is not here is a reason to fall back
        raise EstimateError(f"model {cfg.model.name}: no tokenizer on this machine ({type(e).__name__})") from e
    lengths: list[int] = []
    for source in cfg.data.sources():
        if not Path(source.path).is_file():
            raise EstimateError(f"{source.path}: not a local file")
        records = read_any(source.path)
        if cfg.data.max_samples:
            records = records[:cfg.data.max_samples]
        every = max(1, math.ceil(len(records) / sample))
        report = inspect_data(source.path, tokenizer, template, cfg.data.max_length, fmt=cfg.data.format,
                              columns=cfg.data.columns, records=records[::every])
        lengths += [min(n, cfg.data.max_length) for n in report.token_lengths]
    if not lengths:
        raise EstimateError("no training record could be tokenized")
    return sum(lengths) / len(lengths), len(lengths)


def count_train_records(path: str) -> int:
    """Records in a .json/.jsonl training file (read, not tokenized)."""
    from tunelab.data.sources import read_any

    return len(read_any(path))


__all__ = ["CPU_BF16_TFLOPS", "DEVICE_TFLOPS", "OPTIM_BYTES", "EstimateError", "activation_bytes", "count_train_records",
           "estimate_run", "measure_mean_tokens", "format_estimate", "meta_model", "model_config"]
