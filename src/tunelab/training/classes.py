"""Classifier samples, scorers and predictions: what the classify stage and selftrain's pseudo-labelling share.

``head`` inputs feed a score head (tunelab.training.heads.ScoreModel); ``label_tokens`` inputs score each label
by the log-probability of the model writing it as the answer. ``predict`` and ``write_eval`` give the
validation probabilities and the metrics saved under ``eval/``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from tunelab.data.io import DataError
from tunelab.data.pipeline import collate
from tunelab.data.stage_formats import ClassExample
from tunelab.data.templates import IGNORE_INDEX, Tokenized, render, tokenize_answer
from tunelab.data.tokenize import encode, prompt_tail, text_head
from tunelab.engine.loop import LOSS_COUNT_KEY
from tunelab.runfolder import RunFolder
from tunelab.training.common import sequence_logps
from tunelab.utils.io import atomic_write_json, atomic_write_jsonl


@dataclass
class ClassSample:
    """One example: the token sequences scored (one for ``head``, one per label for ``label_tokens``) and its class."""

    seqs: list[Tokenized]
    target: int


def class_weights(setting, labels: list[str], train: list[ClassExample]) -> Tensor | None:
    """Cross-entropy weights per class: None, ``balanced`` (n / (K n_c)) or the configured list."""
    if setting == "none":
        return None
    if isinstance(setting, list):
        return torch.tensor(setting, dtype=torch.float32)
    counts = Counter(ex.label for ex in train)
    n, k = len(train), len(labels)
    return torch.tensor([n / (k * counts[lab]) if counts[lab] else 0.0 for lab in labels], dtype=torch.float32)


def head_input(ex: ClassExample, tokenizer, template: str, max_length: int, as_text: bool = False) -> Tokenized:
    """The head's input: raw text (start kept) or the rendered prompt up to the assistant header (`fit_prompt`).

    Both follow the one truncation rule (data/tokenize.py): a text alone keeps its start, a prompt its end.
    ``as_text`` reads a ``messages`` prompt's last user turn as raw text instead (``classify.head_input: text``):
    no system prompt, no template, so all of ``max_length`` goes to the document.
    """
    text = ex.text if ex.text is not None or not as_text else \
        next(m["content"] for m in reversed(ex.prompt) if m["role"] == "user")
    if text is not None:
        ids = text_head(tokenizer(text, add_special_tokens=True)["input_ids"], max_length)
    else:
        ids = fit_prompt(tokenizer, template, ex.prompt, max_length)
    return Tokenized(ids, [IGNORE_INDEX] * len(ids), truncated=False)


def fit_prompt(tokenizer, template: str, messages: list[dict], max_length: int) -> list[int]:
    """The prompt rendered up to the assistant header in at most ``max_length`` tokens.

    A prompt that is too long is shortened inside its longest message (the document to classify): that
    message keeps its start (a news title and lead, an e-mail's subject) and its last few tokens (the question
    that often follows the document), so the system prompt, the question and the assistant header survive.
    Cutting the rendered prompt's start instead would drop the system prompt and the document's beginning,
    the most informative part of most texts. Prompts whose other messages alone exceed the budget keep their end.
    """
    ids = encode(tokenizer, render(tokenizer, template, messages, add_generation_prompt=True))
    longest = max(range(len(messages)), key=lambda i: len(messages[i]["content"]))
    content = tokenizer(messages[longest]["content"], add_special_tokens=False)["input_ids"]
    keep = len(content) - (len(ids) - max_length)
    for _ in range(4):  # re-tokenizing the cut text can move the count by a token or two
        if len(ids) <= max_length or keep <= 0:
            break
        tail = min(24, keep // 4)
        cut = tokenizer.decode(content[:keep - tail]) + tokenizer.decode(content[len(content) - tail:]) if tail \
            else tokenizer.decode(content[:keep])
        shorter = [*messages[:longest], {**messages[longest], "content": cut}, *messages[longest + 1:]]
        ids = encode(tokenizer, render(tokenizer, template, shorter, add_generation_prompt=True))
        keep -= max(1, len(ids) - max_length)
    return prompt_tail(ids, max_length)


def label_answers(ex: ClassExample, labels: list[str]) -> list[str]:
    """The answer text for each label, following the record's own answer pattern when it has one."""
    if ex.answer and ex.label in ex.answer:
        return [ex.answer.replace(ex.label, lab) for lab in labels]
    return list(labels)


def label_inputs(ex: ClassExample, labels: list[str], tokenizer, template: str, max_length: int) -> list[Tokenized]:
    """One prompt + answer(label) sequence per label, labels on the answer tokens."""
    prompt = ex.prompt if ex.prompt is not None else [{"role": "user", "content": ex.text}]
    return [tokenize_answer(tokenizer, template, prompt, answer, max_length, ex.where)
            for answer in label_answers(ex, labels)]


def make_samples(examples: list[ClassExample], labels: list[str], mode: str, tokenizer, template: str,
                 max_length: int, as_text: bool = False) -> list[ClassSample]:
    """Tokenize examples for the chosen mode; an unknown label names the record."""
    index = {lab: i for i, lab in enumerate(labels)}
    out = []
    for ex in examples:
        if ex.label not in index:
            raise DataError(f"{ex.where}: label {ex.label!r} is not one of classify.labels {labels}; "
                            "add it there (or leave classify.labels null to use every label in the data)")
        seqs = ([head_input(ex, tokenizer, template, max_length, as_text)] if mode == "head"
                else label_inputs(ex, labels, tokenizer, template, max_length))
        out.append(ClassSample(seqs, index[ex.label]))
    return out


def collate_classes(samples: list[ClassSample], pad_id: int) -> dict:
    """(B * S, T) sequences (S = 1 for head, K for label_tokens) with the (B,) class targets."""
    batch = collate([seq for s in samples for seq in s.seqs], pad_id)
    batch["targets"] = torch.tensor([s.target for s in samples])  # (B,)
    batch[LOSS_COUNT_KEY] = len(samples)
    return batch


def head_scores(model, batch: dict) -> Tensor:
    """Class logits ``(B, K)`` from the head on the last token."""
    return model(batch["input_ids"], batch["attention_mask"]).float()


def label_token_scores(model, batch: dict) -> Tensor:
    """Class logits ``(B, K)``: each label's answer log-probability ``log p(answer | prompt)``."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    return sequence_logps(out.logits, batch["labels"]).view(batch["targets"].numel(), -1)  # (B*K,) -> (B, K)


SCORERS: dict[str, Callable[[torch.nn.Module, dict], Tensor]] = {"head": head_scores,
                                                                  "label_tokens": label_token_scores}


class EvalLogits:
    """The class logits of the training loop's latest validation pass, in sample order.

    The loop's final evaluation already scores every validation example with the final weights; keeping its
    logits lets the report after training use them instead of scoring the validation set a second time
    (on Fudan news that second pass took as long as training). A pass is ``n`` rows; the next one replaces it.
    """

    def __init__(self, n: int):
        self.n = n
        self.rows: list[Tensor] = []
        self.seen = 0

    def add(self, logits: Tensor) -> None:
        """Record one evaluation batch's logits ``(B, K)``."""
        if self.seen >= self.n:  # a new validation pass begins
            self.rows, self.seen = [], 0
        self.rows.append(logits.detach().float().cpu())
        self.seen += logits.shape[0]

    def probs(self) -> Tensor | None:
        """Class probabilities ``(n, K)`` of the latest complete pass, or None if there is none."""
        if self.seen != self.n or not self.rows:
            return None
        return torch.cat(self.rows).softmax(-1)


def classify_step(model, batch: dict, scorer, weights: Tensor | None, eval_logits: EvalLogits | None = None):
    """(summed weighted cross-entropy, examples, metrics) for one batch; in evaluation also kept in ``eval_logits``."""
    logits = scorer(model, batch)  # (B, K)
    if eval_logits is not None and not model.training:
        eval_logits.add(logits)
    targets = batch["targets"]
    w = None if weights is None else weights.to(logits.device)
    loss = F.cross_entropy(logits, targets, weight=w, reduction="none").sum()
    accuracy = (logits.argmax(-1) == targets).float().mean()
    return loss, targets.numel(), {"accuracy": accuracy.detach()}


@torch.no_grad()
def predict(model, samples: list[ClassSample], collate_fn, scorer, batch_size: int, device) -> Tensor:
    """Class probabilities ``(N, K)`` for samples, restricted to the label set."""
    model.eval()
    probs = []
    for i in range(0, len(samples), batch_size):
        batch = {k: v.to(device) if isinstance(v, Tensor) else v
                 for k, v in collate_fn(samples[i:i + batch_size]).items()}
        probs.append(scorer(model, batch).softmax(-1).cpu())
    return torch.cat(probs)


def write_eval(run_dir, data: str, examples: list[ClassExample], labels: list[str], probs: Tensor,
               settings: dict) -> dict:
    """Accuracy / macro-F1 / AUC on the validation set -> eval/<data>-<time>.json and its predictions."""
    from tunelab.eval.metrics import classification_metrics

    preds = [labels[i] for i in probs.argmax(-1).tolist()]
    truth = [ex.label for ex in examples]
    metrics = classification_metrics(truth, preds, labels, probs.tolist())
    out = RunFolder(run_dir).eval_path(settings["split"])
    rows = [{"prompt": ex.text if ex.text is not None else ex.prompt[-1]["content"], "reference": ex.label,
             "prediction": p, "probs": dict(zip(labels, [round(x, 6) for x in row]))}
            for ex, p, row in zip(examples, preds, probs.tolist())]
    atomic_write_jsonl(RunFolder.predictions_path(out), rows)
    atomic_write_json(out, {"data": data, "metrics": metrics, "settings": settings, "n": len(examples)})
    return metrics
