"""Label masks cover exactly the assistant turns; truncation keeps the response; fallback templates work."""

import pytest

from tunelab.data.formats import Conversation
from tunelab.data.templates import (IGNORE_INDEX, NAMED_TEMPLATES, resolve_template, stop_token_ids,
                                    tokenize_conversation)


def trained_spans(tok, sample):
    """Decode each run of consecutive labelled tokens."""
    spans, cur = [], []
    for i, lab in zip(sample.input_ids, sample.labels):
        if lab != IGNORE_INDEX:
            assert lab == i
            cur.append(i)
        elif cur:
            spans.append(tok.decode(cur))
            cur = []
    if cur:
        spans.append(tok.decode(cur))
    return spans


def test_single_turn_mask_is_the_answer_and_end_marker(tiny_tokenizer):
    tpl = resolve_template(tiny_tokenizer, None)
    conv = Conversation([{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "It is 4."}])
    s = tokenize_conversation(tiny_tokenizer, tpl, conv, 512)
    assert trained_spans(tiny_tokenizer, s) == ["It is 4.<|im_end|>\n"]


def test_multi_turn_trains_every_assistant_turn_and_nothing_else(tiny_tokenizer):
    tpl = resolve_template(tiny_tokenizer, None)
    conv = Conversation([
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."},
        {"role": "tool", "content": "{\"ok\": true}"}, {"role": "assistant", "content": "Done."}])
    s = tokenize_conversation(tiny_tokenizer, tpl, conv, 512)
    assert trained_spans(tiny_tokenizer, s) == ["Hello.<|im_end|>\n", "Paris.<|im_end|>\n", "Done.<|im_end|>\n"]


@pytest.mark.parametrize("name", list(NAMED_TEMPLATES))
def test_named_fallback_templates_mask_the_answer(tiny_tokenizer, name):
    conv = Conversation([{"role": "user", "content": "Say yes"}, {"role": "assistant", "content": "Yes indeed"}])
    s = tokenize_conversation(tiny_tokenizer, NAMED_TEMPLATES[name], conv, 512)
    (span,) = trained_spans(tiny_tokenizer, s)
    assert span.strip().startswith("Yes indeed")
    assert "Say yes" not in span


def test_truncation_never_cuts_away_the_whole_response(tiny_tokenizer):
    tpl = resolve_template(tiny_tokenizer, None)
    long_prompt = "word " * 400
    conv = Conversation([{"role": "user", "content": long_prompt}, {"role": "assistant", "content": "short answer"}])
    s = tokenize_conversation(tiny_tokenizer, tpl, conv, 64)
    assert s.truncated and len(s.input_ids) == 64
    assert trained_spans(tiny_tokenizer, s) == ["short answer<|im_end|>\n"]
    conv = Conversation([{"role": "user", "content": "q"}, {"role": "assistant", "content": long_prompt}])
    s = tokenize_conversation(tiny_tokenizer, tpl, conv, 64)
    assert len(s.input_ids) == 64 and s.n_targets >= 32


def test_template_resolution_and_stop_tokens(tiny_tokenizer, tmp_path):
    assert resolve_template(tiny_tokenizer, "llama3") == NAMED_TEMPLATES["llama3"]
    f = tmp_path / "t.jinja"
    f.write_text(NAMED_TEMPLATES["vicuna"])
    assert resolve_template(tiny_tokenizer, str(f)) == NAMED_TEMPLATES["vicuna"]
    with pytest.raises(ValueError, match="neither a named template"):
        resolve_template(tiny_tokenizer, "nope")
    im_end = tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end in stop_token_ids(tiny_tokenizer, NAMED_TEMPLATES["chatml"])


def test_tokenizer_without_template_falls_back_to_chatml(tiny_tokenizer):
    import copy

    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = None
    assert resolve_template(tok, None) == NAMED_TEMPLATES["chatml"]
