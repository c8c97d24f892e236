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


# ---- assistant_spans in linear time: the windowed spans equal the full prefix renders ----

LOOKS_BACK = ("{% for message in messages %}{{ 'Round ' ~ loop.index ~ ' ' ~ message['role'] ~ ': ' ~ "
              "message['content'] ~ '\n' }}{% endfor %}"
              "{% if add_generation_prompt %}{{ 'Round ' ~ (messages | length + 1) ~ ' assistant: ' }}{% endif %}")
ALTERNATION = ("{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
               "{{ raise_exception('roles must alternate user/assistant') }}{% endif %}"
               "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] | trim + ' [/INST]' }}"
               "{% else %}{{ ' ' + message['content'] | trim + eos_token }}{% endif %}{% endfor %}")


def _conversations() -> dict[str, Conversation]:
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"  turn {i} " + "word " * (i % 3) + " "}
             for i in range(9)]
    return {
        "single": Conversation([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]),
        "system first": Conversation([{"role": "system", "content": "be brief"}, *turns]),
        "user first": Conversation(turns),
        "assistant first": Conversation([{"role": "assistant", "content": "welcome"}, *turns[:4]]),
        "empty answer": Conversation([{"role": "user", "content": "q"}, {"role": "assistant", "content": ""},
                                      {"role": "user", "content": "again"}, {"role": "assistant", "content": "a"}]),
        "tools": Conversation(
            [{"role": "user", "content": "weather?"},
             {"role": "assistant", "content": "", "tool_calls": [{"name": "get", "arguments": {"city": "Oslo"}}]},
             {"role": "tool", "content": "rain"}, {"role": "assistant", "content": "It rains."},
             {"role": "user", "content": "thanks"}, {"role": "assistant", "content": "bye"}],
            tools='[{"name": "get", "parameters": {"type": "object"}}]'),
    }


@pytest.mark.parametrize("name", [*NAMED_TEMPLATES, "own", "looks-back", "alternation"])
def test_assistant_spans_equal_the_full_prefix_renders(tiny_tokenizer, name):
    from tunelab.data.templates import _prefix_spans, assistant_spans, render, template_messages

    template = {"own": resolve_template(tiny_tokenizer, None), "looks-back": LOOKS_BACK,
                "alternation": ALTERNATION}.get(name) or NAMED_TEMPLATES[name]
    checked = 0
    for label, conv in _conversations().items():
        msgs, tools = template_messages(conv, template)
        try:
            reference = _prefix_spans(tiny_tokenizer, template, msgs, tools,
                                      render(tiny_tokenizer, template, msgs, tools=tools), conv)
        except Exception:  # noqa: BLE001 - e.g. the alternation template rejects a system turn
            continue
        text, spans = assistant_spans(tiny_tokenizer, template, conv)
        assert spans == reference, (name, label)
        assert [text[a:b] for a, b in spans] and len(spans) == sum(m["role"] == "assistant" for m in msgs)
        checked += 1
    assert checked >= 3


@pytest.mark.parametrize("name", ["chatml", "llama3", "qwen"])
def test_a_two_thousand_turn_conversation_takes_the_linear_path(tiny_tokenizer, name):
    from tunelab.data.templates import _windowed_spans, assistant_spans, template_messages

    template = NAMED_TEMPLATES[name]
    conv = Conversation([{"role": "system", "content": "sys"}] +
                        [{"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i}"}
                         for i in range(2000)])
    text, spans = assistant_spans(tiny_tokenizer, template, conv)
    assert len(spans) == 1000 and spans[-1][1] == len(text)
    msgs, tools = template_messages(conv, template)
    assert _windowed_spans(tiny_tokenizer, template, msgs, tools, text) == spans  # no quadratic fallback
    # the last turn's span is what appending it to the rest renders (spot check of the full-prefix definition)
    from tunelab.data.templates import render

    before = render(tiny_tokenizer, template, msgs[:-1], add_generation_prompt=True)
    assert spans[-1] == (len(before), len(text))


def test_a_template_file_in_another_encoding_names_the_file(tiny_tokenizer, tmp_path):
    f = tmp_path / "t.jinja"
    f.write_bytes("{{ 'café' }}".encode("latin-1"))
    with pytest.raises(ValueError, match=r"t\.jinja.*UTF-8"):
        resolve_template(tiny_tokenizer, str(f))
