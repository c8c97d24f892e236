"""The one truncation rule (data/tokenize.py) gives exactly what each of its four former copies gave.

The references below are the former bodies, copied verbatim: data.templates._truncate (SFT conversations),
training.tokens.join_truncated (pairs, KTO, label scoring), and the slices of training.classes.head_input
(raw text: start) and training.rollout.prompt_samples / eval.loglik (a prompt alone: end).
"""

import random

import pytest

from tunelab.data.io import DataError
from tunelab.data.templates import tokenize_answer, tokenize_conversation
from tunelab.data.tokenize import (
    IGNORE_INDEX,
    join_truncated,
    prompt_tail,
    text_head,
    truncate,
    truncate_labeled,
)


def old_sft_truncate(ids, labels, max_length):
    first = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
    prompt_ids, rest_ids, rest_labels = ids[:first], ids[first:], labels[first:]
    rest_budget = max(max_length - len(prompt_ids), max_length // 2)
    rest_ids, rest_labels = rest_ids[:rest_budget], rest_labels[:rest_budget]
    keep_prompt = max_length - len(rest_ids)
    prompt_ids = prompt_ids[len(prompt_ids) - keep_prompt:] if keep_prompt > 0 else []
    return prompt_ids + rest_ids, [IGNORE_INDEX] * len(prompt_ids) + rest_labels


def old_join_truncated(prompt_ids, answer_ids, max_length):
    truncated = len(prompt_ids) + len(answer_ids) > max_length
    if truncated:
        answer_ids = answer_ids[:max(max_length - len(prompt_ids), max_length // 2)]
        keep = max_length - len(answer_ids)
        prompt_ids = prompt_ids[len(prompt_ids) - keep:] if keep > 0 else []
    if not prompt_ids:
        prompt_ids, answer_ids = answer_ids[:1], answer_ids[1:]
    return prompt_ids + answer_ids, [IGNORE_INDEX] * len(prompt_ids) + list(answer_ids), truncated


def cases(seed=0, n=3000):
    rng = random.Random(seed)
    for _ in range(n):
        yield (list(range(1000, 1000 + rng.randint(0, 60))), list(range(2000, 2000 + rng.randint(0, 60))),
               rng.randint(9, 80))


def test_conversations_truncate_exactly_as_before():
    rng = random.Random(1)
    for prompt, answer, max_length in cases():
        if not answer:
            continue
        ids = prompt + answer
        # later turns: some answer positions are prompt tokens of the next turn (not targets)
        labels = [IGNORE_INDEX] * len(prompt) + [a if rng.random() > 0.3 or i == 0 else IGNORE_INDEX
                                                  for i, a in enumerate(answer)]
        got = truncate_labeled(ids, labels, max_length)
        if len(ids) <= max_length:
            assert (got.input_ids, got.labels, got.truncated) == (ids, labels, False)
        else:
            assert (got.input_ids, got.labels) == old_sft_truncate(ids, labels, max_length)
            assert got.truncated and len(got.input_ids) <= max_length


def test_prompt_answer_pairs_truncate_exactly_as_before():
    for prompt, answer, max_length in cases(2):
        if not answer:
            with pytest.raises(DataError, match="an answer has no tokens"):
                join_truncated(prompt, answer, max_length)
            continue
        got = join_truncated(prompt, answer, max_length)
        assert (got.input_ids, got.labels, got.truncated) == old_join_truncated(prompt, answer, max_length)


def test_a_prompt_alone_keeps_its_end_and_a_text_its_start():
    for prompt, text, max_length in cases(3):
        assert prompt_tail(prompt, max_length) == prompt[-max_length:]
        assert text_head(text, max_length) == text[:max_length]


def test_the_rule_gives_the_answer_at_least_half_and_the_prompt_its_end():
    prompt, answer = list(range(100)), list(range(500, 600))
    p, a = truncate(prompt, answer, 40)
    assert a == answer[:20] and p == prompt[-20:]
    p, a = truncate(prompt[:5], answer, 40)  # a short prompt leaves the answer more than half
    assert p == prompt[:5] and a == answer[:35]
    assert truncate(prompt[:5], answer[:5], 40) == (prompt[:5], answer[:5])


def test_stage_entry_points_apply_the_rule_to_real_tokens(tiny_tokenizer):
    """tokenize_conversation and tokenize_answer on a real template: the cut falls where the rule says."""
    from tunelab.data.formats import Conversation
    from tunelab.data.templates import prompt_ids, resolve_template, split_prompt_answer

    tpl = resolve_template(tiny_tokenizer, None)
    prompt = [{"role": "user", "content": " ".join(f"word{i}" for i in range(60))}]
    answer = " ".join(f"reply{i}" for i in range(60))
    full = tokenize_conversation(tiny_tokenizer, tpl, Conversation([*prompt, {"role": "assistant",
                                                                             "content": answer}]), 10_000)
    cut = tokenize_conversation(tiny_tokenizer, tpl, Conversation([*prompt, {"role": "assistant",
                                                                            "content": answer}]), 64)
    assert (cut.input_ids, cut.labels) == old_sft_truncate(full.input_ids, full.labels, 64)
    p_text, a_text = split_prompt_answer(tiny_tokenizer, tpl, prompt, answer)
    p_ids = tiny_tokenizer(p_text, add_special_tokens=False)["input_ids"]
    a_ids = tiny_tokenizer(a_text, add_special_tokens=False)["input_ids"]
    pair = tokenize_answer(tiny_tokenizer, tpl, prompt, answer, 64)
    assert (pair.input_ids, pair.labels, pair.truncated) == old_join_truncated(p_ids, a_ids, 64)
    assert p_ids == prompt_ids(tiny_tokenizer, tpl, prompt)
