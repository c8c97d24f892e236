"""A scoring head on the decoder: the model of the reward and classify stages.

`ScoreModel` runs the causal LM's decoder (adapters included, no vocabulary projection) and applies a linear
head to one vector per sequence: the hidden state of its last real token (``pooling="last"``, as Hugging Face's
``*ForSequenceClassification``) or the mean over its real tokens (``pooling="mean"``): ``(B, T) -> (B, num_labels)``.
The head counts as the model's output layer (``get_output_embeddings``), so ``optim.head_lr_scale`` applies to it. The method
(LoRA, full, ...) trains the decoder as usual and the head always trains. `HeadMethod` wraps the method so
checkpoints and the final weights carry the head: the run's `adapter/` (or `model/`) folder holds the
method's own files plus `head.safetensors` and `head.json`, and `load_scorer(run)` rebuilds the scorer.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import torch
from safetensors.torch import load_file, save_file

HEAD_FILE, HEAD_META = "head.safetensors", "head.json"  # HEAD_FILE is in methods.weights.BESIDE_MODEL


def decoder_of(lm: torch.nn.Module) -> torch.nn.Module:
    """The transformer body of a causal LM (a PEFT wrapper's adapted layers included)."""
    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    body = getattr(base, getattr(base, "base_model_prefix", "model"), None)
    if body is None:
        raise ValueError(f"{type(base).__name__} has no decoder attribute {base.base_model_prefix!r}; a scoring head "
                         "needs a Hugging Face causal LM")
    return body


POOLINGS = ("last", "mean")


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """One vector per right-padded row: ``(B, T, H), (B, T) -> (B, H)`` (last real token, or mean of real tokens)."""
    if pooling == "last":
        last = attention_mask.sum(1) - 1  # (B,) index of each row's last real token
        return hidden[torch.arange(hidden.size(0), device=hidden.device), last]
    if pooling == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
    raise ValueError(f"unknown pooling {pooling!r}; choose one of {POOLINGS}")


def new_head(lm: torch.nn.Module, num_labels: int, seed: int = 0) -> torch.nn.Linear:
    """A bias-free linear head ``hidden -> num_labels`` on the LM's device, drawn as TRL's value head: N(0, 1/(H+1))."""
    hidden = lm.config.hidden_size
    head = torch.nn.Linear(hidden, num_labels, bias=False)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        head.weight.copy_(torch.randn(num_labels, hidden, generator=gen) / (hidden + 1) ** 0.5)
    return head.to(next(lm.parameters()).device)


class ScoreModel(torch.nn.Module):
    """A causal LM's decoder with a linear head on the last real token (or the mean of the real tokens)."""

    def __init__(self, lm: torch.nn.Module, num_labels: int, labels: list[str] | None = None, seed: int = 0,
                 pooling: str = "last"):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; choose one of {POOLINGS}")
        self.pooling = pooling
        self.lm = lm
        self.head = new_head(lm, num_labels, seed)
        self.labels = labels

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The pooled vector the head reads, ``(B, T) -> (B, H)`` (also what domain adaptation aligns)."""
        hidden = decoder_of(self.lm)(input_ids=input_ids, attention_mask=attention_mask,
                                     use_cache=False).last_hidden_state  # (B, T, H)
        return pool(hidden, attention_mask, self.pooling).to(self.head.weight.dtype)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Scores ``(B, num_labels)`` from right-padded ``(B, T)`` inputs."""
        return self.head(self.features(input_ids, attention_mask))

    def get_output_embeddings(self) -> torch.nn.Linear:
        """The scoring head: the output layer whose learning rate ``optim.head_lr_scale`` multiplies."""
        return self.head

    def gradient_checkpointing_enable(self, **kw) -> None:
        self.lm.gradient_checkpointing_enable(**kw)


class HeadMethod:
    """A method whose save / load_state also write / read the scoring head (for checkpoints and the run)."""

    def __init__(self, method: ModuleType):
        self.method = method
        self.WEIGHTS_DIR = method.WEIGHTS_DIR

    def save(self, model: ScoreModel, out_dir: Path) -> None:
        self.method.save(model.lm, out_dir)
        save_file({"weight": model.head.weight.detach().cpu().contiguous()}, str(Path(out_dir) / HEAD_FILE))
        meta = {"num_labels": model.head.out_features, "hidden_size": model.head.in_features, "labels": model.labels}
        if hasattr(model, "pooling"):  # a sequence head; PPO's per-token value head pools nothing
            meta["pooling"] = model.pooling
        if hasattr(model, "head_meta"):  # what else a head needs to be rebuilt (a tagger's scheme)
            meta.update(model.head_meta())
        (Path(out_dir) / HEAD_META).write_text(json.dumps(meta, ensure_ascii=False, indent=1), encoding="utf-8")

    def load_state(self, model: ScoreModel, out_dir: Path) -> None:
        self.method.load_state(model.lm, out_dir)
        load_head(model, out_dir)


def load_head(model: ScoreModel, weights_dir: Path) -> None:
    """Load `head.safetensors` from a run's weights folder into the model's head."""
    state = load_file(str(Path(weights_dir) / HEAD_FILE))
    model.head.weight.data.copy_(state["weight"].to(model.head.weight.device))


def load_scorer(run, device: str = "cpu") -> ScoreModel:
    """The trained scorer of a reward or classify run (`tunelab.run.Run`), in eval mode."""
    lm, _, _ = run.load_model(device=device)
    weights = run.weights_dir()
    meta = json.loads((weights / HEAD_META).read_text(encoding="utf-8"))
    model = ScoreModel(lm, meta["num_labels"], meta["labels"], pooling=meta.get("pooling", "last"))
    load_head(model, weights)
    return model.eval()
