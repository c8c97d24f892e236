"""Named templates for current families render what the families' own templates render (the originals as TRL
ships them, read offline), and data.template_options controls thinking at inference and in the loss."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunelab.data.formats import Conversation
from tunelab.data.templates import (
    IGNORE_INDEX,
    NAMED_TEMPLATES,
    apply_template_options,
    render,
    tokenize_conversation,
)
from tunelab.models import load_tokenizer

trl = pytest.importorskip("trl")
ORIGINALS = Path(trl.__file__).parent / "chat_templates"

SYSTEM = {"role": "system", "content": "You are terse."}
USER = {"role": "user", "content": "What is 2 + 2?"}
ANSWER = {"role": "assistant", "content": "4"}
THOUGHT = {"role": "assistant", "content": "<think>\n2 and 2 make 4.\n</think>\n\n4"}


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny-llama")


def original(name: str) -> str:
    return (ORIGINALS / f"{name}.jinja").read_text(encoding="utf-8")


def both(tok, ours: str, theirs: str, messages: list[dict], gen: bool, **kw) -> tuple[str, str]:
    def r(t):
        return tok.apply_chat_template(messages, chat_template=t, tokenize=False, add_generation_prompt=gen, **kw)
    return r(ours), r(theirs)


@pytest.mark.parametrize("thinking", [None, True, False])
def test_qwen3_prompts_match_qwen3s_own_template(tok, thinking) -> None:
    kw = {} if thinking is None else {"enable_thinking": thinking}
    for msgs in ([USER], [SYSTEM, USER], [USER, THOUGHT, {"role": "user", "content": "And 3 + 3?"}]):
        ours, theirs = both(tok, NAMED_TEMPLATES["qwen3"], original("qwen3"), msgs, True, **kw)
        if len(msgs) == 3:  # Qwen3 drops reasoning from turns before the last question; ours keeps the turn as
            theirs = theirs.replace("<think>\n2 and 2 make 4.\n</think>\n\n", "")  # trained (it stays incremental)
            ours = ours.replace("<think>\n2 and 2 make 4.\n</think>\n\n", "")
        assert ours == theirs


def test_qwen3_answers_match_qwen3s_own_template(tok) -> None:
    ours, theirs = both(tok, NAMED_TEMPLATES["qwen3"], original("qwen3"), [USER, THOUGHT], False)
    assert ours == theirs  # a reasoning answer, rendered the way Qwen3 trains its last turn
    ours, theirs = both(tok, NAMED_TEMPLATES["qwen3"], original("qwen3"), [SYSTEM, USER, ANSWER], False,
                        enable_thinking=False)
    assert ours == theirs  # non-thinking: the empty think block before the answer


def test_gemma_matches_gemmas_own_template(tok) -> None:
    msgs = [USER, ANSWER, {"role": "user", "content": "  And 3 + 3?  "}, {"role": "assistant", "content": "6"}]
    for gen in (False, True):
        for n in (1, 2, 4):
            ours, theirs = both(tok, NAMED_TEMPLATES["gemma"], original("gemma"), msgs[:n], gen)
            assert ours == theirs
    system = tok.apply_chat_template([SYSTEM, USER], chat_template=NAMED_TEMPLATES["gemma"], tokenize=False)
    assert system.endswith("<start_of_turn>user\nYou are terse.\n\nWhat is 2 + 2?<end_of_turn>\n")


def test_phi3_matches_phi3s_own_template(tok) -> None:
    msgs = [SYSTEM, USER, ANSWER]
    for name in ("phi3", "phi3_5"):
        ours, theirs = both(tok, NAMED_TEMPLATES["phi3"], original(name), msgs[:2], True)
        assert ours == theirs
        ours, theirs = both(tok, NAMED_TEMPLATES["phi3"], original(name), msgs, False)
        assert ours + tok.eos_token == theirs  # theirs appends eos after a whole conversation; turns end at <|end|>


def test_deepseek_matches_r1s_own_template(tok) -> None:
    for msgs in ([USER], [SYSTEM, USER], [SYSTEM, USER, THOUGHT]):
        gen = msgs[-1]["role"] == "user"
        ours, theirs = both(tok, NAMED_TEMPLATES["deepseek"], original("deepseek_r1_distill"), msgs, gen,
                            enable_thinking=True)
        if not gen:  # R1's template drops the reasoning of answers it re-renders; ours trains on it
            ours = ours.replace("<think>\n2 and 2 make 4.\n</think>", "")
        assert ours == theirs


def test_mistral_renders_the_instruct_format(tok) -> None:
    text = tok.apply_chat_template([SYSTEM, USER, ANSWER, {"role": "user", "content": "3 + 3?"}],
                                   chat_template=NAMED_TEMPLATES["mistral"], tokenize=False)
    bos, eos = tok.bos_token, tok.eos_token
    assert text == f"{bos}[INST] You are terse.\n\nWhat is 2 + 2? [/INST]4{eos}[INST] 3 + 3? [/INST]"


def test_thinking_option_reaches_inference_and_training(tok) -> None:
    tpl = apply_template_options(NAMED_TEMPLATES["qwen3"], enable_thinking=False)
    assert render(tok, tpl, [USER], add_generation_prompt=True).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    on = apply_template_options(NAMED_TEMPLATES["qwen3"], enable_thinking=True)
    assert render(tok, on, [USER], add_generation_prompt=True).endswith("<|im_start|>assistant\n")
    # training with thinking off: the answer follows the empty think block, which is part of the prompt (the
    # generation prompt prefills it at inference), so the loss is on the answer alone
    t = tokenize_conversation(tok, tpl, Conversation([USER, ANSWER]), 256)
    trained = tok.decode([i for i, label in zip(t.input_ids, t.labels) if label != IGNORE_INDEX])
    assert trained == "4<|im_end|>\n"
    assert tok.decode(t.input_ids).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n4<|im_end|>\n")


@pytest.mark.parametrize("name", ["qwen3", "deepseek"])
def test_think_content_is_kept_or_masked_in_the_loss(tok, name) -> None:
    conv = Conversation([USER, THOUGHT])
    keep = tokenize_conversation(tok, NAMED_TEMPLATES[name], conv, 256)
    mask = tokenize_conversation(tok, apply_template_options(NAMED_TEMPLATES[name], think_loss="mask"), conv, 256)
    assert keep.input_ids == mask.input_ids
    kept = tok.decode([i for i, label in zip(keep.input_ids, keep.labels) if label != IGNORE_INDEX])
    assert "think>\n2 and 2 make 4.\n</think>\n\n4" in kept  # (the tiny tokenizer may fuse "<" with the marker)
    trained = tok.decode([i for i, label in zip(mask.input_ids, mask.labels) if label != IGNORE_INDEX])
    assert "2 and 2 make" not in trained and "</think>" not in trained
    assert trained.lstrip().startswith("4") and len(mask.labels) == len(keep.labels)


def test_a_run_keeps_its_thinking_mode_in_its_template(tmp_path) -> None:
    import json

    import tunelab

    rows = [{"messages": [USER, ANSWER]} for _ in range(4)]
    (tmp_path / "d.json").write_text(json.dumps(rows), encoding="utf-8")
    run = tunelab.train({"model": {"name": "tiny-llama", "chat_template": "qwen3"}, "output_dir": str(tmp_path / "r"),
                         "data": {"train": str(tmp_path / "d.json"), "max_length": 64, "val_size": 0.0,
                                  "template_options": {"enable_thinking": False, "think_loss": "mask"}},
                         "method": {"name": "lora", "r": 2, "alpha": 4},
                         "train": {"max_steps": 1, "batch_size": 2, "report": False}}, progress=False)
    saved = run.chat_template
    assert saved == apply_template_options(NAMED_TEMPLATES["qwen3"], enable_thinking=False, think_loss="mask")
    tok = run.load_tokenizer()  # chat and serve render with the saved template: thinking stays off
    assert render(tok, saved, [USER], add_generation_prompt=True).endswith("<think>\n\n</think>\n\n")
