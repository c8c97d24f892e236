"""Several tasks on one shared model: a head per task over the same decoder (hard parameter sharing).

Task kinds and their heads (all read the decoder's last hidden states, so the trunk and its method's
weights, LoRA or full, are shared by every task):

    classify  pooled hidden state -> K logits (``tunelab.training.heads.pool``); cross-entropy
    regress   pooled hidden state -> 1 number; squared error
    tag       every position -> K tag logits, read at each word's first sub-token (``training.tagging``)
    lm        the causal LM's own output layer; next-token loss on the answer tokens (``sft_loss``)

A batch may mix tasks; each task's loss is its mean over its part of the batch, and the batch's loss is
``sum_t loss_weight_t * mean_t * n_t`` over ``n = sum_t n_t`` examples (``loss_count``), so accumulation stays
exact and a task's pull grows with its weight and its share of the samples. In evaluation (the model in
eval mode) the weights are left out, so ``eval_loss/<task>`` is that task's plain mean loss.

The heads are saved beside the method's weights as ``heads.safetensors`` (``<task>.weight``) + ``heads.json``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor

from tunelab.data.pipeline import collate
from tunelab.data.templates import IGNORE_INDEX, Tokenized
from tunelab.engine.loop import LOSS_COUNT_KEY
from tunelab.training.classes import ClassSample, collate_classes
from tunelab.training.heads import decoder_of, new_head, pool
from tunelab.training.lm_loss import sft_loss
from tunelab.training.tagging import TagSample, collate_tags

HEADS_FILE, HEADS_META = "heads.safetensors", "heads.json"  # HEADS_FILE is in methods.weights.BESIDE_MODEL


@dataclass
class RegSample:
    """One regression input and its target number."""

    seq: Tokenized
    value: float


@dataclass
class TaskSample:
    """A sample of one task (its kind's own sample type)."""

    task: str
    sample: object


def outputs_of(spec: dict) -> int:
    """Head width of a task: its number of classes or tags, 1 for regression."""
    return 1 if spec["kind"] == "regress" else len(spec["labels"])


class MultiHeadModel(torch.nn.Module):
    """A causal LM shared by every task, with one linear head per classify / regress / tag task."""

    def __init__(self, lm: torch.nn.Module, specs: dict[str, dict], seed: int = 0):
        super().__init__()
        self.lm, self.specs = lm, specs
        self.heads = torch.nn.ModuleDict({task: new_head(lm, outputs_of(spec), seed + i)
                                          for i, (task, spec) in enumerate(specs.items()) if spec["kind"] != "lm"})

    def hidden(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """The shared decoder's last hidden states ``(B, T, H)``."""
        return decoder_of(self.lm)(input_ids=input_ids, attention_mask=attention_mask,
                                   use_cache=False).last_hidden_state

    def task_output(self, task: str, batch: dict) -> Tensor:
        """A head task's output: ``(B, K)`` classify, ``(B,)`` regress, ``(B, T, K)`` tag."""
        spec, head = self.specs[task], self.heads[task]
        hidden = self.hidden(batch["input_ids"], batch["attention_mask"]).to(head.weight.dtype)  # (B, T, H)
        if spec["kind"] == "tag":
            return head(hidden)
        out = head(pool(hidden, batch["attention_mask"], spec.get("pooling", "mean")))  # (B, K)
        return out.squeeze(-1) if spec["kind"] == "regress" else out

    def get_output_embeddings(self) -> torch.nn.Module:
        """Every task head: what ``optim.head_lr_scale`` multiplies."""
        return self.heads

    def gradient_checkpointing_enable(self, **kw) -> None:
        self.lm.gradient_checkpointing_enable(**kw)


SEP = "|"
"""Batch keys are ``<task>|<key>``: one flat dict of tensors, so the loop moves every task's tensors to the device."""


def collate_multi(samples: list[TaskSample], specs: dict[str, dict], pad_id: int) -> dict:
    """Each task's samples batched by its kind's collator, under ``<task>|<key>`` keys.

    ``attention_mask`` at the top is ``(1, real input tokens)`` of ones: what the loop counts for tokens/s.
    """
    by_task: dict[str, list] = {}
    for s in samples:
        by_task.setdefault(s.task, []).append(s.sample)
    flat: dict = {}
    real = 0
    for task, items in by_task.items():
        kind = specs[task]["kind"]
        if kind == "classify":
            sub = collate_classes(items, pad_id)
        elif kind == "regress":
            sub = {**collate([s.seq for s in items], pad_id),
                   "values": torch.tensor([s.value for s in items], dtype=torch.float32)}
        elif kind == "tag":
            sub = collate_tags(items, pad_id)
        else:
            sub = collate(items, pad_id)
        real += int(sub["attention_mask"].sum())
        flat.update({f"{task}{SEP}{k}": v for k, v in sub.items() if isinstance(v, Tensor)})
    flat["attention_mask"] = torch.ones((1, max(real, 1)), dtype=torch.long)
    flat[LOSS_COUNT_KEY] = len(samples)
    return flat


def task_batches(batch: dict) -> dict[str, dict]:
    """``{task: its batch}`` from a `collate_multi` batch."""
    out: dict[str, dict] = {}
    for key, value in batch.items():
        if SEP in key:
            task, _, name = key.partition(SEP)
            out.setdefault(task, {})[name] = value
    return out


def task_mean_loss(model: MultiHeadModel, task: str, batch: dict) -> tuple[Tensor, int]:
    """(mean loss of one task's batch, its examples)."""
    kind = model.specs[task]["kind"]
    if kind == "lm":
        total, count = sft_loss(model.lm, batch)
        return total / max(int(count), 1), batch["input_ids"].size(0)
    out = model.task_output(task, batch).float()
    if kind == "classify":
        return F.cross_entropy(out, batch["targets"]), out.size(0)
    if kind == "regress":
        return F.mse_loss(out, batch["values"]), out.size(0)
    keep = batch["tag_targets"] != IGNORE_INDEX  # (B, T) word-first tokens
    return F.cross_entropy(out[keep], batch["tag_targets"][keep]), out.size(0)


def multi_step(model: MultiHeadModel, batch: dict, weights: dict[str, float]):
    """(sum_t w_t * mean_t * n_t, n) for a batch; the weights apply only while training.

    No per-task numbers are returned as step metrics: the loop would average them over batches that lack the
    task. Per-task validation losses come from the named eval sets (eval_loss/<task>) instead.
    """
    total, n = None, 0
    for task, sub in task_batches(batch).items():
        mean, count = task_mean_loss(model, task, sub)
        w = weights[task] if model.training else 1.0
        part = w * mean * count
        total = part if total is None else total + part
        n += count
    return total, n


@torch.no_grad()
def task_predictions(model: MultiHeadModel, task: str, samples: list, pad_id: int, batch_size: int, device) -> list:
    """Per-sample outputs of a head task: class-probability lists, numbers, or per-word tag lists."""
    spec = model.specs[task]
    was = model.training
    model.eval()
    out: list = []
    for i in range(0, len(samples), batch_size):
        chunk = samples[i:i + batch_size]
        flat = collate_multi([TaskSample(task, s) for s in chunk], model.specs, pad_id)
        batch = {k: v.to(device) for k, v in task_batches(flat)[task].items()}
        result = model.task_output(task, batch).float().cpu()
        if spec["kind"] == "classify":
            out += result.softmax(-1).tolist()
        elif spec["kind"] == "regress":
            out += result.tolist()
        else:
            best = result.argmax(-1)
            for b, s in enumerate(chunk):
                tags = [spec["labels"][int(best[b, p])] for p in s.word_starts]
                out.append(tags + ["O"] * (s.n_words - len(tags)))
    model.train(was)
    return out


def regression_metrics(truth: list[float], pred: list[float]) -> dict:
    """MSE, MAE, R^2 and Pearson's r of predictions against the true values."""
    n = len(truth)
    mse = sum((p - t) ** 2 for t, p in zip(truth, pred)) / n
    mae = sum(abs(p - t) for t, p in zip(truth, pred)) / n
    mt, mp = sum(truth) / n, sum(pred) / n
    var_t = sum((t - mt) ** 2 for t in truth)
    var_p = sum((p - mp) ** 2 for p in pred)
    cov = sum((t - mt) * (p - mp) for t, p in zip(truth, pred))
    return {"mse": mse, "mae": mae, "r2": 1 - mse * n / var_t if var_t else float("nan"),
            "pearson": cov / math.sqrt(var_t * var_p) if var_t and var_p else float("nan")}


class MultiHeadMethod:
    """A method whose save / load_state also write / read every task head (checkpoints and the run)."""

    def __init__(self, method):
        self.method = method
        self.WEIGHTS_DIR = method.WEIGHTS_DIR

    def save(self, model: MultiHeadModel, out_dir: Path) -> None:
        self.method.save(model.lm, out_dir)
        save_file({f"{t}.weight": h.weight.detach().cpu().contiguous() for t, h in model.heads.items()},
                  str(Path(out_dir) / HEADS_FILE))
        (Path(out_dir) / HEADS_META).write_text(json.dumps(model.specs, ensure_ascii=False, indent=1),
                                                encoding="utf-8")

    def load_state(self, model: MultiHeadModel, out_dir: Path) -> None:
        self.method.load_state(model.lm, out_dir)
        load_heads(model, out_dir)


def load_heads(model: MultiHeadModel, weights_dir: Path) -> None:
    """Copy ``heads.safetensors`` into the model's task heads."""
    state = load_file(str(Path(weights_dir) / HEADS_FILE))
    for task, head in model.heads.items():
        head.weight.data.copy_(state[f"{task}.weight"].to(head.weight.device))


def load_multihead(run, device: str = "cpu") -> MultiHeadModel:
    """The trained shared model and heads of a multihead run (`tunelab.run.Run`), in eval mode."""
    lm, _, _ = run.load_model(device=device)
    weights = run.weights_dir()
    specs = json.loads((weights / HEADS_META).read_text(encoding="utf-8"))
    model = MultiHeadModel(lm, specs)
    load_heads(model, weights)
    return model.eval()


__all__ = ["ClassSample", "MultiHeadMethod", "MultiHeadModel", "RegSample", "TagSample", "TaskSample",
           "collate_multi", "load_multihead", "task_batches", "multi_step", "regression_metrics", "task_predictions"]
