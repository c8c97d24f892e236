"""Token-level pieces every stage shares: the label mask value, a tokenized sample, and the one truncation rule.

**The truncation rule.** A sample is a context (the prompt) followed by what is trained or scored (the answer).
When both do not fit in `max_length` tokens, the answer keeps its start and at least half the budget (more when
the prompt is short); the prompt keeps its most recent tokens (the end of a conversation is what the answer
replies to). `truncate` is that rule; every stage applies it through the helpers below:

- SFT conversations (`truncate_labeled`, via data.templates.tokenize_conversation): the prompt is everything
  before the first trained token;
- prompt + one answer (`join_truncated`: preference pairs, KTO, label scoring, via data.templates.tokenize_answer);
- a prompt alone (`prompt_tail`: rollout prompts for grpo/ppo/selftrain, a classifier head's chat input,
  log-likelihood scoring): it keeps its end;
- a text alone (`text_head`: a classifier head's raw-text input): it keeps its start, as an answer does.

Rendering with a chat template lives in data.templates, which calls these; this module imports only
data.io (for DataError), so every module of data/ and above can use it.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunelab.data.io import DataError

IGNORE_INDEX = -100
"""The label of a position that is not a target (PyTorch's cross_entropy ignore_index); the one definition."""

__all__ = ["IGNORE_INDEX", "Tokenized", "encode", "join_truncated", "prompt_tail", "text_head", "truncate",
           "truncate_labeled"]


@dataclass
class Tokenized:
    """One training sample: token ids and labels (IGNORE_INDEX where the loss is masked)."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool = False

    @property
    def n_targets(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


def truncate(prompt_ids: list[int], answer_ids: list[int], max_length: int) -> tuple[list[int], list[int]]:
    """(prompt, answer) cut to at most `max_length` tokens together by the one truncation rule (module docstring).

    Unchanged when they fit. Otherwise the answer keeps its first max(max_length - len(prompt), max_length // 2)
    tokens and the prompt keeps its last tokens in what is left (possibly none).
    """
    if len(prompt_ids) + len(answer_ids) <= max_length:
        return list(prompt_ids), list(answer_ids)
    answer_ids = answer_ids[:max(max_length - len(prompt_ids), max_length // 2)]
    keep = max_length - len(answer_ids)
    prompt_ids = prompt_ids[len(prompt_ids) - keep:] if keep > 0 else []
    return list(prompt_ids), list(answer_ids)


def truncate_labeled(ids: list[int], labels: list[int], max_length: int) -> Tokenized:
    """A labeled sequence (a conversation, labels on assistant turns) cut by `truncate`.

    The prompt is everything before the first target; the answer is the rest (later turns included), so the
    response is never cut away as a whole. The sequence must have a target.
    """
    if len(ids) <= max_length:
        return Tokenized(list(ids), list(labels))
    first = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
    prompt, rest = truncate(ids[:first], ids[first:], max_length)
    return Tokenized(prompt + rest, [IGNORE_INDEX] * len(prompt) + labels[first:first + len(rest)], truncated=True)


def join_truncated(prompt_ids: list[int], answer_ids: list[int], max_length: int) -> Tokenized:
    """Prompt + answer with labels on the answer, cut by `truncate`; `truncated` says whether it was.

    The first answer token is predicted from the last prompt token, so a prompt keeps at least one token
    (the answer's first one when there is no prompt). Raises DataError for an empty answer.
    """
    if not answer_ids:
        raise DataError("an answer has no tokens")
    was_cut = len(prompt_ids) + len(answer_ids) > max_length
    prompt_ids, answer_ids = truncate(prompt_ids, answer_ids, max_length)
    if not prompt_ids:
        prompt_ids, answer_ids = answer_ids[:1], answer_ids[1:]
    return Tokenized(prompt_ids + answer_ids, [IGNORE_INDEX] * len(prompt_ids) + list(answer_ids), was_cut)


def prompt_tail(prompt_ids: list[int], max_length: int) -> list[int]:
    """A prompt alone (generation, scoring, a classifier head's chat input) in `max_length` tokens: its end."""
    return truncate(prompt_ids, [], max_length)[0]


def text_head(text_ids: list[int], max_length: int) -> list[int]:
    """A text alone (a classifier head's raw-text input) in `max_length` tokens: its start, as an answer keeps."""
    return truncate([], text_ids, max_length)[1]


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of text as the template rendered it (special tokens are already in the text)."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]
