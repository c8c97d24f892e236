"""Bottleneck adapters (Houlsby et al. 2019, arXiv:1902.00751; Pfeiffer et al. 2020, arXiv:2005.00247).

A small down-project -> non-linearity -> up-project block with a residual connection is placed
after the attention output projection (Houlsby) and after the MLP (Houlsby and Pfeiffer). The
up-projection starts at zero, so the adapted model starts exactly equal to the base.

Placement is public module replacement: each decoder layer's `self_attn` / `mlp` child is
replaced by `WithAdapter(child, bottleneck)`, whose forward calls the original module and adds
the bottleneck to its output. The run stores only the adapter tensors (`bottleneck_adapter.safetensors`) plus
`bottleneck_config.json`; adapters are non-linear, so they cannot be merged into the base.

The file names are our own on purpose: this is not a PEFT adapter, and PEFT's names (adapter_config.json,
adapter_model.safetensors) would make PeftModel, vLLM or LLaMA-Factory misread the folder. Runs written before
the rename (with PEFT's names and ``"tunelab_method": "adapter"``) still load.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tunelab.methods import NotMergeable, decoder_layers

__all__ = ["WEIGHTS_DIR", "Bottleneck", "WithAdapter", "apply", "load_for_inference", "load_state", "merge", "save"]

WEIGHTS_DIR = "adapter"
CONFIG_FILE = "bottleneck_config.json"
WEIGHTS_FILE = "bottleneck_adapter.safetensors"
OLD_FILES = ("adapter_config.json", "adapter_model.safetensors")  # (config, weights) of runs before the rename
PLACES: dict[str, tuple[str, ...]] = {"houlsby": ("self_attn", "mlp"), "pfeiffer": ("mlp",)}
ACTIVATIONS = {"relu": torch.nn.ReLU, "gelu": torch.nn.GELU, "silu": torch.nn.SiLU}


class Bottleneck(torch.nn.Module):
    """x + up(act(down(x))): (B, T, H) -> (B, T, H) through a (H -> H/reduction -> H) bottleneck."""

    def __init__(self, hidden: int, reduction: int, activation: str):
        super().__init__()
        width = max(1, hidden // reduction)
        self.down = torch.nn.Linear(hidden, width)
        self.act = ACTIVATIONS[activation]()
        self.up = torch.nn.Linear(width, hidden)
        torch.nn.init.zeros_(self.up.weight)  # identity at start
        torch.nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(self.act(self.down(x)))


class WithAdapter(torch.nn.Module):
    """Run the wrapped sub-module, then the bottleneck on its (first) output."""

    def __init__(self, inner: torch.nn.Module, adapter: Bottleneck):
        super().__init__()
        self.inner = inner
        self.adapter = adapter

    def forward(self, *args, **kwargs):
        out = self.inner(*args, **kwargs)
        if isinstance(out, tuple):  # attention returns (hidden, weights, ...)
            return (self.adapter(out[0]), *out[1:])
        return self.adapter(out)


def apply(model, cfg):
    """Freeze the base and wrap each decoder layer's attention and/or MLP with a bottleneck adapter."""
    for p in model.parameters():
        p.requires_grad_(False)
    _, layers = decoder_layers(model)
    hidden = model.config.hidden_size
    ref = next(model.parameters())
    for layer in layers:
        for place in PLACES[cfg.placement]:
            inner = getattr(layer, place, None)
            if inner is None:
                raise ValueError(f"method.placement: {cfg.placement} needs a `{place}` module in each decoder layer; "
                                 f"{type(layer).__name__} has {', '.join(n for n, _ in layer.named_children())}")
            block = Bottleneck(hidden, cfg.reduction_factor, cfg.activation).to(ref.device, ref.dtype)
            setattr(layer, place, WithAdapter(inner, block))
    model.tunelab_adapter_cfg = cfg.model_dump()
    return model


def _adapter_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous() for n, p in model.named_parameters() if ".adapter." in n}


def save(model, out_dir: Path) -> None:
    """Write the adapter tensors (safetensors) and the settings that rebuild them."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(_adapter_state(model), str(out_dir / WEIGHTS_FILE), metadata={"format": "pt", "tunelab_method":
                                                                              "adapter"})
    base = getattr(model, "name_or_path", None) or None
    (out_dir / CONFIG_FILE).write_text(json.dumps({"tunelab_method": "adapter", "base_model_name_or_path": base,
                                                   **model.tunelab_adapter_cfg}, indent=2), encoding="utf-8")


def _file(out_dir: Path, which: int) -> Path:
    """The config (0) or weights (1) file of a saved adapter: today's name, else the name runs used before."""
    new = Path(out_dir) / (CONFIG_FILE, WEIGHTS_FILE)[which]
    old = Path(out_dir) / OLD_FILES[which]
    return new if new.is_file() or not old.is_file() else old


def load_state(model, out_dir: Path) -> None:
    """Copy saved adapter tensors into a model prepared by `apply`."""
    state = load_file(str(_file(out_dir, 1)))
    own = _adapter_state(model)
    if set(state) != set(own):
        raise ValueError(f"{out_dir}: adapter does not match the model "
                         f"(missing {sorted(set(own) - set(state))[:3]}, unexpected {sorted(set(state) - set(own))[:3]})")
    model.load_state_dict(state, strict=False)


def load_for_inference(base_model, out_dir: Path):
    """Rebuild the adapters from adapter_config.json on the base model and load their weights."""
    from tunelab.config.methods import AdapterCfg

    settings = json.loads(_file(out_dir, 0).read_text(encoding="utf-8"))
    settings.pop("tunelab_method", None)
    settings.pop("base_model_name_or_path", None)
    model = apply(base_model, AdapterCfg(**settings))
    load_state(model, out_dir)
    return model


def merge(model):
    """Bottlenecks are non-linear functions of the activations: no weight matrix can absorb them."""
    raise NotMergeable("bottleneck adapters apply a non-linearity to the hidden states, so they cannot be folded "
                       "into the base weights. Serve the base model with the run's adapter/ folder instead "
                       "(Run.load_model() without merged=True).")
