"""What the guided New-job flow knows beyond the schema: presets, model facts, tasks, method trade-offs,
recommended settings for a model and device, whether an estimate fits, and two runs' config diff.

Nothing here runs user code or reads a path a request names: presets are files shipped in
`tunelab/studio/presets/` (the same files as `examples/presets/`), model facts come from the
model list the studio already allows (tunelab.studio.runs.list_models), and a diff reads two run
folders through `runs.run_path`. Every config the flow builds still goes through
`forms.check_config` (the CLI's validation plus the studio's path rules) before it is shown or queued.
"""

from __future__ import annotations

import difflib
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from tunelab.studio.paths import NotFound, Settings, StudioError

PRESETS_DIR = Path(__file__).resolve().parent / "presets"
PRESETS: dict[str, str] = {  # file stem -> title, in the order the page shows them
    "quick-lora-cpu": "Quick LoRA on CPU",
    "qlora-24gb": "QLoRA for a 24 GB GPU",
    "full-small": "Full fine-tune small model",
    "dpo-pairs": "DPO on preference pairs",
    "classifier-head": "Classifier head",
}
PRESET_DATA_KEYS = ("train", "eval")
"""Data paths of a preset point at the repository's example data; the studio takes the dataset from its library."""

TASKS: list[dict[str, Any]] = [
    {"id": "chat", "title": "Chat SFT", "stages": ["sft"],
     "help": "Answers in the chat template from instruction/answer pairs or conversations."},
    {"id": "classify", "title": "Classification", "stages": ["classify"],
     "help": "One label per text: a head on the last token, or the label words scored."},
    {"id": "preference", "title": "Preference", "stages": ["dpo", "orpo", "simpo", "kto", "reward"],
     "help": "Prefer the chosen answer over the rejected one (pairs), or train a reward model."},
    {"id": "rl", "title": "RL", "stages": ["grpo", "ppo"],
     "help": "Sample answers and reinforce the ones a reward function scores higher."},
    {"id": "pretrain", "title": "Continued pretraining", "stages": ["pretrain"],
     "help": "Plain text: every token trains, to teach a domain's language."},
    {"id": "distill", "title": "Distillation", "stages": ["distill", "selftrain"],
     "help": "Learn from a teacher model's outputs, or from its own confident pseudo-labels."},
]

METHODS: dict[str, dict[str, str]] = {  # one line each: memory, speed, quality
    "lora": {"memory": "low", "speed": "fast", "quality": "good",
             "line": "Small low-rank updates on every linear layer; the usual choice."},
    "qlora": {"memory": "lowest", "speed": "slower (4-bit dequant)", "quality": "close to LoRA",
              "line": "LoRA over a 4-bit base: a 7-8B model on a 24 GB GPU. CUDA only."},
    "full": {"memory": "highest (~4x weights)", "speed": "slowest per step", "quality": "best",
             "line": "Every weight trains; for small models or when adapters are not enough."},
    "freeze": {"memory": "medium", "speed": "fast", "quality": "good on the top layers",
               "line": "Train only the last layers, freeze the rest."},
    "adapter": {"memory": "low", "speed": "fast", "quality": "good",
                "line": "Bottleneck adapters after attention/MLP (Houlsby)."},
    "ia3": {"memory": "lowest", "speed": "fastest", "quality": "fair",
            "line": "Learned scaling vectors only: a very light touch."},
    "prefix": {"memory": "lowest", "speed": "fast", "quality": "fair",
               "line": "Trainable key/value prefixes in every layer."},
    "ptuning_v2": {"memory": "lowest", "speed": "fast", "quality": "fair",
                   "line": "Deep prompt tuning (P-Tuning v2)."},
    "prompt": {"memory": "lowest", "speed": "fast", "quality": "weakest",
               "line": "A few trainable input embeddings (soft prompt)."},
    "ptuning": {"memory": "lowest", "speed": "fast", "quality": "weak",
                "line": "Soft prompt produced by a small encoder (P-Tuning)."},
}

KEY_SETTINGS = ("train.lr", "train.epochs", "train.max_steps", "method.r", "data.max_length", "train.batch_size")
"""The few settings the guided flow shows; every other key is under Advanced."""

DEVICE_MEMORY_GIB = {"cuda": 24.0, "h100": 80.0}
"""Memory assumed for a device kind when no such device is present here (a 24 GB card; an 80 GB H100)."""


# ---- presets ----------------------------------------------------------------------------------------
def _preset_text(pid: str) -> str:
    if pid not in PRESETS:
        raise NotFound(f"no preset {pid!r}; choose from {', '.join(PRESETS)}")
    return (PRESETS_DIR / f"{pid}.yaml").read_text(encoding="utf-8")


def preset(pid: str) -> dict[str, Any]:
    """One preset: its id, title, the comment that documents it, its YAML and its config without data paths."""
    text = _preset_text(pid)
    config = yaml.safe_load(text) or {}
    config.pop("output_dir", None)
    data = config.get("data") or {}
    for key in PRESET_DATA_KEYS:
        data.pop(key, None)
    about = " ".join(line.lstrip("# ").strip() for line in text.splitlines()
                     if line.startswith("# ") and not line.startswith("###"))
    return {"id": pid, "title": PRESETS[pid], "about": about, "file": f"examples/presets/{pid}.yaml",
            "yaml": text, "config": config}


def presets() -> list[dict[str, Any]]:
    """Every preset, in PRESETS order."""
    return [preset(pid) for pid in PRESETS]


# ---- model facts ------------------------------------------------------------------------------------
@lru_cache(maxsize=64)
def _arch_facts(name: str, stamp: float) -> dict[str, Any]:
    """Parameters and context of a model from its config alone (a skeleton on the meta device)."""
    import torch

    from tunelab.estimate import _BUILD_LOCK, model_config

    with _BUILD_LOCK:  # transformers' lazy imports are not thread-safe (see tunelab.estimate)
        from transformers import AutoModelForCausalLM

        config = model_config(name)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    return {"params": params, "context": getattr(config, "max_position_embeddings", None),
            "layers": getattr(config, "num_hidden_layers", None), "hidden": getattr(config, "hidden_size", None),
            "architecture": (getattr(config, "architectures", None) or [type(config).__name__])[0]}


def _disk_bytes(path: Path | None) -> int | None:
    if path is None or not path.exists():
        return None
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def model_facts(settings: Settings, entry: dict[str, Any]) -> dict[str, Any]:
    """A model list entry with params, context length, layers and size on disk (None where unknown)."""
    from tunelab.estimate import EstimateError
    from tunelab.models import TINY_MODELS

    name = entry["name"]
    path: Path | None = None
    if entry["kind"] == "alias" and name not in TINY_MODELS:
        from tunelab.models import ModelNotFound
        from tunelab.models.loader import smollm2_gguf_path

        try:
            path = smollm2_gguf_path()
        except ModelNotFound:
            path = None
    elif entry["kind"] != "alias":
        path = Path(name) if Path(name).is_absolute() else settings.data_dir / name
    facts: dict[str, Any] = {"params": None, "context": None, "layers": None, "hidden": None, "architecture": None}
    try:
        stamp = path.stat().st_mtime if path is not None and path.exists() else 0.0
        # a folder under a model root is read by its absolute path: the studio's cwd need not be the data dir
        facts = _arch_facts(str(path) if entry["kind"] != "alias" and path is not None else name, stamp)
    except (EstimateError, OSError, ValueError, KeyError) as e:
        facts = {**facts, "problem": str(e)}
    return {**entry, **facts, "disk_bytes": _disk_bytes(path), "tiny": name in TINY_MODELS}


# ---- recommended settings -----------------------------------------------------------------------------
def device_memory_gib(device: str) -> tuple[str, float]:
    """(device kind, memory budget in GiB): the real GPU or RAM here when present, else DEVICE_MEMORY_GIB."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        try:
            import psutil

            return device, psutil.virtual_memory().total / 1024 ** 3 * 0.8
        except ImportError:
            import os

            return device, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024 ** 3 * 0.8
    if device == "cuda" and torch.cuda.is_available():
        return device, torch.cuda.get_device_properties(0).total_memory / 1024 ** 3 * 0.95
    return device, DEVICE_MEMORY_GIB.get(device, 24.0)


def recommended(model: str, method: str, stage: str, device: str, params: int | None, context: int | None,
                p95_tokens: int | None = None) -> dict[str, Any]:
    """Defaults for the key settings for this model, method, stage and device, each with the reason.

    Learning rate by method and stage (adapters 2e-4, full 2e-5 and less for bigger models, preference
    5e-6); rank 8 on CPU, 16 on a GPU; max_length covers 95% of the dataset's samples (rounded up to
    a power of two) within the model's context; batch 4 on CPU, 8 on a GPU (the estimate then checks it).
    """
    cpu = device == "cpu"
    big = params is not None and params > 1_000_000_000
    if stage in ("dpo", "orpo", "simpo", "kto", "ppo", "grpo"):
        lr, why_lr = 5e-6, "preference and RL updates move a tuned policy a little"
    elif method in ("full", "freeze"):
        lr, why_lr = (1e-5, "full updates of a >1B model") if big else (2e-5, "full updates are large")
    elif method in ("prompt", "ptuning", "prefix", "ptuning_v2", "ia3"):
        lr, why_lr = 1e-3, "few parameters need a larger step"
    else:
        lr, why_lr = 2e-4, "the usual LoRA rate"
    limit = context or 2048
    want = p95_tokens or 512
    max_length = 64
    while max_length < want and max_length < limit:
        max_length *= 2
    max_length = min(max_length, limit, 512 if cpu else 2048)
    out = {
        "train.lr": {"value": lr, "why": why_lr},
        "train.epochs": {"value": 3 if stage in ("sft", "classify", "pretrain") else 1,
                         "why": "small datasets need a few passes" if stage in ("sft", "classify", "pretrain")
                         else "one pass is usual for preference/RL data"},
        "data.max_length": {"value": max_length,
                            "why": f"covers 95% of the samples ({p95_tokens} tokens)" if p95_tokens
                            else "a typical chat turn; choose a dataset to size it"},
        "train.batch_size": {"value": 4 if cpu else 8, "why": "CPU: small steps stay responsive" if cpu
                             else "fills a GPU without long sequences"},
    }
    if method in ("lora", "qlora"):
        out["method.r"] = {"value": 8 if cpu else 16, "why": "rank 8 is quick on CPU" if cpu
                           else "rank 16: good quality, memory grows linearly with it"}
    return out


# ---- does it fit --------------------------------------------------------------------------------------
def fit_check(cfg, est: dict, n_samples: int | None, device: str, budget_gib: float | None) -> dict[str, Any]:
    """Whether the estimate fits the memory budget, and when not, fixes that do (each re-estimated).

    A fix is a set of form values ({key: value}) the page can apply with one click: the largest batch
    that fits (with grad_accum keeping the effective batch), gradient checkpointing, QLoRA.
    """
    from tunelab.estimate import GIB, estimate_run

    _, detected = device_memory_gib(est["device"] if device == "auto" else device)
    budget = float(budget_gib) if budget_gib else detected
    need = est["memory"]["total_bytes"] / GIB
    result: dict[str, Any] = {"budget_gib": round(budget, 2), "need_gib": round(need, 3), "fits": need <= budget,
                              "fixes": []}
    if result["fits"]:
        return result

    def total(**changes: Any) -> float:
        c = cfg.model_copy(deep=True)
        for path, value in changes.items():
            section, key = path.split(".", 1)
            setattr(getattr(c, section), key, value)
        return estimate_run(c, n_samples, None, est["device"])["memory"]["total_bytes"] / GIB

    bs, ga = cfg.train.batch_size, cfg.train.grad_accum
    b = bs // 2
    while b >= 1:
        if (gib := total(**{"train.batch_size": b})) <= budget:
            result["fixes"].append({"text": f"batch {b} x grad_accum {ga * (bs // b)} (same effective batch): "
                                    f"{gib:.2f} GiB", "values": {"train.batch_size": str(b),
                                                                "train.grad_accum": str(ga * (bs // b))}})
            break
        b //= 2
    if not cfg.train.gradient_checkpointing:
        gib = total(**{"train.gradient_checkpointing": True})
        result["fixes"].append({"text": f"gradient checkpointing (recompute activations, ~30% slower): {gib:.2f} GiB"
                                + ("" if gib <= budget else " (still over)"),
                                "values": {"train.gradient_checkpointing": True}})
    if cfg.method.name in ("lora", "full", "freeze") and est["device"] != "cpu":
        gib = _qlora_gib(cfg, n_samples, est["device"])
        result["fixes"].append({"text": "QLoRA: the base in 4 bits, adapters on top (CUDA only)"
                                + (f": {gib:.2f} GiB" + ("" if gib <= budget else " (still over)") if gib else ""),
                                "values": {"method.name": "qlora"}})
    if not result["fixes"]:
        result["fixes"].append({"text": "a smaller model or a shorter data.max_length", "values": {}})
    return result


def _qlora_gib(cfg, n_samples: int | None, device: str) -> float | None:
    """The estimate with method qlora (the LoRA options kept), or None when that config does not build."""
    from tunelab.config import ConfigError, build_config
    from tunelab.estimate import GIB, EstimateError, estimate_run

    data = cfg.model_dump(mode="json")
    data["method"] = {"name": "qlora", **{k: v for k, v in data["method"].items()
                                           if k in ("r", "alpha", "dropout", "target_modules")}}
    try:
        return estimate_run(build_config(data), n_samples, None, device)["memory"]["total_bytes"] / GIB
    except (ConfigError, EstimateError, ValueError):
        return None


# ---- run vs run ----------------------------------------------------------------------------------------
def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: node}


def config_diff(a_dir: Path, b_dir: Path) -> dict[str, Any]:
    """Two runs' resolved configs: every key whose value differs (a, b), and a unified diff of their YAML."""
    from tunelab.run import Run

    try:
        ca, cb = (Run(d).config.model_dump(mode="json") for d in (a_dir, b_dir))
    except Exception as e:  # noqa: BLE001 - an unreadable config is the user's file: report it
        raise StudioError(f"cannot read a run's config ({e})") from None
    ca.pop("output_dir", None)
    cb.pop("output_dir", None)
    fa, fb = _flat(ca), _flat(cb)
    rows = [{"key": k, "a": fa.get(k), "b": fb.get(k)} for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)]
    ya, yb = (yaml.safe_dump(c, sort_keys=True, allow_unicode=True).splitlines() for c in (ca, cb))
    unified = list(difflib.unified_diff(ya, yb, a_dir.name, b_dir.name, lineterm="", n=1))
    return {"a": a_dir.name, "b": b_dir.name, "rows": rows, "unified": "\n".join(unified)}
