"""Tokenizing a prompt and one answer for the stages that score answers (preference, KTO, label scoring).

The prompt is rendered with the run's chat template up to the assistant header; the answer is the rest of
the rendered conversation (its text plus the template's end-of-turn marker), so the scored tokens are
exactly those SFT trains on and chat generates. Labels are -100 on the prompt.
"""

from __future__ import annotations

from tunelab.data.io import DataError
from tunelab.data.templates import IGNORE_INDEX, Tokenized, render


def split_prompt_answer(tokenizer, template: str, prompt: list[dict], answer: str,
                        where: str = "a record") -> tuple[str, str]:
    """(prompt text ending in the assistant header, answer text with its end marker) under `template`."""
    prompt_text = render(tokenizer, template, prompt, add_generation_prompt=True)
    full = render(tokenizer, template, [*prompt, {"role": "assistant", "content": answer}])
    if not full.startswith(prompt_text):
        raise DataError(f"{where}: the chat template renders the prompt differently once an answer follows, so "
                        "the answer's tokens cannot be located; set model.chat_template to a named template "
                        "such as chatml")
    return prompt_text, full[len(prompt_text):]


def join_truncated(prompt_ids: list[int], answer_ids: list[int], max_length: int) -> Tokenized:
    """Prompt + answer with labels on the answer; over max_length, keep the answer's start and the prompt's end.

    The answer keeps at least half the budget (more when the prompt is short); the prompt keeps its most
    recent tokens, as SFT truncation does.
    """
    if not answer_ids:
        raise DataError("an answer has no tokens")
    truncated = len(prompt_ids) + len(answer_ids) > max_length
    if truncated:
        answer_ids = answer_ids[:max(max_length - len(prompt_ids), max_length // 2)]
        keep = max_length - len(answer_ids)
        prompt_ids = prompt_ids[len(prompt_ids) - keep:] if keep > 0 else []
    # the first answer token is predicted from the last prompt token, so a prompt needs >= 1 token
    if not prompt_ids:
        prompt_ids, answer_ids = answer_ids[:1], answer_ids[1:]
    return Tokenized(prompt_ids + answer_ids, [IGNORE_INDEX] * len(prompt_ids) + list(answer_ids), truncated)


def tokenize_answer(tokenizer, template: str, prompt: list[dict], answer: str, max_length: int,
                    where: str = "a record") -> Tokenized:
    """Token ids of prompt + answer with labels on the answer only."""
    prompt_text, answer_text = split_prompt_answer(tokenizer, template, prompt, answer, where)
    return join_truncated(encode(tokenizer, prompt_text), encode(tokenizer, answer_text), max_length)


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of text as the template rendered it (special tokens are already in the text)."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]
