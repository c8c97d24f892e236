"""A per-token tagging head on the decoder: the model, samples, loss and predictions of token classification.

`TagModel` runs the causal LM's decoder (adapters included) and a linear head on every position:
``(B, T) -> (B, T, K)``. Words are tokenized one by one (a space before every word but the first), and a word's
tag is read from its first sub-token (the usual "first sub-token" labelling); the other sub-tokens carry no
target. A decoder sees only the words to the left, so a word's tag is decided without its right context.
The head is saved with the run as ``head.safetensors`` + ``head.json`` by `tunelab.training.heads.HeadMethod`
(with ``"kind": "token"``), and `load_tagger(run)` rebuilds the tagger.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from tunelab.data.tagging import TagExample
from tunelab.data.templates import IGNORE_INDEX
from tunelab.engine.loop import LOSS_COUNT_KEY
from tunelab.eval.entities import entity_metrics
from tunelab.runfolder import RunFolder
from tunelab.training.heads import HEAD_META, decoder_of, load_head, new_head
from tunelab.utils.io import atomic_write_json, atomic_write_jsonl


class TagModel(torch.nn.Module):
    """A causal LM's decoder with a linear tag head on every position."""

    def __init__(self, lm: torch.nn.Module, labels: list[str], seed: int = 0, scheme: str = "BIO"):
        super().__init__()
        self.lm, self.labels, self.scheme = lm, list(labels), scheme
        self.head = new_head(lm, len(labels), seed)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Tag logits ``(B, T, K)`` from right-padded ``(B, T)`` inputs."""
        hidden = decoder_of(self.lm)(input_ids=input_ids, attention_mask=attention_mask,
                                     use_cache=False).last_hidden_state  # (B, T, H)
        return self.head(hidden.to(self.head.weight.dtype))

    def hidden_states(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """The decoder's last hidden states ``(B, T, H)`` (what the head reads)."""
        return decoder_of(self.lm)(input_ids=input_ids, attention_mask=attention_mask,
                                   use_cache=False).last_hidden_state

    def get_output_embeddings(self) -> torch.nn.Linear:
        """The tag head: the output layer whose learning rate ``optim.head_lr_scale`` multiplies."""
        return self.head

    def gradient_checkpointing_enable(self, **kw) -> None:
        self.lm.gradient_checkpointing_enable(**kw)

    def head_meta(self) -> dict:
        return {"kind": "token", "scheme": self.scheme}


@dataclass
class TagSample:
    """Token ids, the index of each kept word's first sub-token, and the word tag ids (-1 = unknown tag)."""

    input_ids: list[int]
    word_starts: list[int]
    targets: list[int]
    n_words: int  # words in the sentence; those past max_length have no start (predicted O)


def encode_words(tokenizer, words: list[str], max_length: int) -> tuple[list[int], list[int]]:
    """(token ids, first-token index of each word that fits in max_length)."""
    ids: list[int] = []
    starts: list[int] = []
    for i, word in enumerate(words):
        piece = tokenizer((" " if i else "") + word, add_special_tokens=False)["input_ids"] or \
            tokenizer(word, add_special_tokens=False)["input_ids"]
        if not piece or len(ids) + len(piece) > max_length:
            if not piece:
                continue
            break
        starts.append(len(ids))
        ids.extend(piece)
    return ids, starts


def make_tag_samples(examples: list[TagExample], labels: list[str], tokenizer, max_length: int) -> list[TagSample]:
    """Tokenize tagged sentences; a tag outside `labels` becomes -1 (never a target, always a miss)."""
    index = {t: i for i, t in enumerate(labels)}
    out = []
    for ex in examples:
        ids, starts = encode_words(tokenizer, ex.words, max_length)
        out.append(TagSample(ids, starts, [index.get(t, -1) for t in ex.tags[:len(starts)]], len(ex.words)))
    return out


def collate_tags(samples: list[TagSample], pad_id: int) -> dict:
    """Right-padded ``(B, T)`` input_ids / attention_mask and ``(B, T)`` tag targets on word-first tokens."""
    width = max(max(len(s.input_ids) for s in samples), 1)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    targets = torch.full((len(samples), width), IGNORE_INDEX, dtype=torch.long)
    for b, s in enumerate(samples):
        ids[b, :len(s.input_ids)] = torch.tensor(s.input_ids, dtype=torch.long)
        mask[b, :len(s.input_ids)] = 1
        for pos, t in zip(s.word_starts, s.targets):
            if t >= 0:
                targets[b, pos] = t
    n = int((targets != IGNORE_INDEX).sum())
    return {"input_ids": ids, "attention_mask": mask, "tag_targets": targets, LOSS_COUNT_KEY: max(n, 1)}


def tag_step(model, batch: dict, weights: Tensor | None = None):
    """(summed cross-entropy over word-first tokens, their count, {"accuracy": word accuracy})."""
    logits = model(batch["input_ids"], batch["attention_mask"]).float()  # (B, T, K)
    targets = batch["tag_targets"]  # (B, T)
    keep = targets != IGNORE_INDEX
    w = None if weights is None else weights.to(logits.device)
    loss = F.cross_entropy(logits[keep], targets[keep], weight=w, reduction="sum")
    accuracy = (logits[keep].argmax(-1) == targets[keep]).float().mean() if keep.any() else logits.new_zeros(())
    return loss, int(keep.sum()), {"accuracy": accuracy.detach()}


@torch.no_grad()
def predict_tags(model: TagModel, samples: list[TagSample], pad_id: int, batch_size: int, device) -> list[list[str]]:
    """Word tags per sample: argmax at each word's first token; words cut by max_length get O."""
    was = model.training
    model.eval()
    out = []
    for i in range(0, len(samples), batch_size):
        chunk = samples[i:i + batch_size]
        batch = collate_tags(chunk, pad_id)
        logits = model(batch["input_ids"].to(device), batch["attention_mask"].to(device))  # (B, T, K)
        best = logits.argmax(-1).cpu()
        for b, s in enumerate(chunk):
            tags = [model.labels[int(best[b, pos])] for pos in s.word_starts]
            out.append(tags + ["O"] * (s.n_words - len(tags)))
    model.train(was)
    return out


def load_tagger(run, device: str = "cpu") -> TagModel:
    """The trained tagger of a token_classify run (`tunelab.run.Run`), in eval mode."""
    lm, _, _ = run.load_model(device=device)
    weights = run.weights_dir()
    meta = json.loads((weights / HEAD_META).read_text(encoding="utf-8"))
    if meta.get("kind") != "token":
        raise ValueError(f"{run.path}: not a token_classify run (its head is a {meta.get('kind', 'sequence')} head)")
    model = TagModel(lm, meta["labels"], scheme=meta.get("scheme", "BIO"))
    load_head(model, weights)
    return model.eval()


def write_tag_eval(run_dir, data: str, examples, pred: list[list[str]], scheme: str) -> dict:
    """Entity metrics of the validation set -> eval/validation-<time>.json, and the predicted tags beside it."""
    metrics = entity_metrics([ex.tags for ex in examples], pred)
    out = RunFolder(run_dir).eval_path("validation")
    atomic_write_jsonl(RunFolder.predictions_path(out), [
        {"words": ex.words, "reference": ex.tags, "prediction": p} for ex, p in zip(examples, pred)])
    atomic_write_json(out, {"data": data, "metrics": metrics, "settings": {"split": "validation", "scheme": scheme},
                            "n": len(examples)})
    return metrics
