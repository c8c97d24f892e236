"""Multiple-choice benchmarks (MMLU, C-Eval, CMMLU style) scored by log-likelihood with a run's template.

Each question becomes one user message listing the options; every option is scored by the
log-likelihood of its letter (`scoring="letter"`, the MMLU convention of Hendrycks et al., 2021)
or of its text (`scoring="text"`, with a per-character normalised variant, lm-evaluation-harness's
acc_norm) as the assistant's answer. The highest-scoring option is the model's choice; no
text is generated, so the score does not depend on answer parsing.

Accepted records (.json array or .jsonl), one question each:
  {"question": ..., "A": ..., "B": ..., "C": ..., "D": ..., "answer": "B"}     (C-Eval / CMMLU)
  {"question": ..., "choices": [..., ...], "answer": "B" | 1}                   (MMLU on the Hub; int = 0-based)
"""

from __future__ import annotations

import string
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.data.io import DataError
from tunelab.data.sources import read_any
from tunelab.eval.loglik import option_logprobs

LETTERS = string.ascii_uppercase
PROMPT_END = "Answer with the letter of the correct option."


@dataclass(frozen=True)
class Question:
    """One multiple-choice item; `answer` is the index of the correct choice."""

    question: str
    choices: list[str]
    answer: int
    where: str
    subject: str | None = None


def _choices(row: dict[str, Any], where: str) -> list[str]:
    if "choices" in row or "options" in row:
        choices = row.get("choices", row.get("options"))
        if not isinstance(choices, list) or not all(isinstance(c, (str, int, float)) for c in choices):
            raise DataError(f"{where}: 'choices' must be a list of option texts")
        return [str(c) for c in choices]
    choices = []
    for letter in LETTERS:
        if letter not in row:
            break
        choices.append(str(row[letter]))
    return choices


def _answer(row: dict[str, Any], n: int, where: str) -> int:
    value = row.get("answer")
    if isinstance(value, bool) or value is None:
        raise DataError(f"{where}: missing 'answer'; give the correct option's letter (e.g. \"B\") "
                        "or its 0-based index")
    if isinstance(value, int):
        index = value
    elif isinstance(value, str) and len(value.strip()) == 1 and value.strip().upper() in LETTERS:
        index = LETTERS.index(value.strip().upper())
    else:
        raise DataError(f"{where}: 'answer' is {value!r}; use a letter A-{LETTERS[n - 1]} or a 0-based index")
    if not 0 <= index < n:
        raise DataError(f"{where}: 'answer' {value!r} points past the {n} options; "
                        f"use a letter A-{LETTERS[n - 1]} or an index 0-{n - 1}")
    return index


def load_questions(path: str | Path) -> list[Question]:
    """Read and validate a multiple-choice file; every problem names its file:line and the fix."""
    items, problems = [], []
    for rec in read_any(path):
        row, where = rec.data, rec.where
        try:
            if not isinstance(row.get("question"), str) or not row["question"].strip():
                raise DataError(f"{where}: missing 'question' text")
            choices = _choices(row, where)
            if len(choices) < 2:
                raise DataError(f"{where}: needs at least two options, as 'choices': [...] or keys 'A', 'B', ...")
            items.append(Question(row["question"], choices, _answer(row, len(choices), where), where,
                                  row.get("subject") if isinstance(row.get("subject"), str) else None))
        except DataError as e:
            problems.append(str(e))
    if problems:
        raise DataError(f"{len(problems)} problem(s) in {path}:\n  " + "\n  ".join(problems))
    if not items:
        raise DataError(f"{path}: no questions")
    return items


def format_question(q: Question) -> str:
    """The user message: optional subject line, question, lettered options, instruction."""
    head = f"The following is a multiple choice question about {q.subject.replace('_', ' ')}.\n\n" if q.subject else ""
    options = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(q.choices))
    return f"{head}{q.question}\n\n{options}\n\n{PROMPT_END}"


# scoring name -> option index -> continuation text
SCORINGS: dict[str, Callable[[Question, int], str]] = {
    "letter": lambda q, i: LETTERS[i],
    "text": lambda q, i: q.choices[i],
}


def score_mc(model, tokenizer, template: str, path: str | Path, scoring: str = "letter", batch_size: int = 8,
             max_length: int = 2048, limit: int | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(metrics, per-question rows) of a loaded model on a multiple-choice file.

    Metrics: "accuracy" (argmax of summed log-likelihood), for text scoring also "accuracy_norm"
    (log-likelihood per character of the option), and "n". Rows hold the prompt, the reference
    and predicted letters, "correct" and each option's log-likelihood.
    """
    if scoring not in SCORINGS:
        raise ValueError(f"unknown multiple-choice scoring {scoring!r}; choose from {', '.join(SCORINGS)}")
    questions = load_questions(path)[:limit] if limit else load_questions(path)
    options = [[SCORINGS[scoring](q, i) for i in range(len(q.choices))] for q in questions]
    prompts = [[{"role": "user", "content": format_question(q)}] for q in questions]
    scores = option_logprobs(model, tokenizer, template, prompts, options, batch_size, max_length)
    rows, hits, hits_norm = [], 0, 0
    for q, texts, row in zip(questions, options, scores):
        ll = [s for s, _ in row]
        pick = max(range(len(ll)), key=ll.__getitem__)
        pick_norm = max(range(len(ll)), key=lambda i: ll[i] / max(len(texts[i]), 1))
        hits += pick == q.answer
        hits_norm += pick_norm == q.answer
        rows.append({"prompt": format_question(q), "reference": LETTERS[q.answer], "prediction": LETTERS[pick],
                     "correct": pick == q.answer, "loglik": ll, "where": q.where})
    metrics: dict[str, Any] = {"accuracy": hits / len(questions)}
    if scoring == "text":
        metrics["accuracy_norm"] = hits_norm / len(questions)
    metrics["n"] = len(questions)
    return metrics, rows
