"""The text-field view: which strings of each format are text, and on which side."""

from tunelab.data.prepare.text import cjk_share, join_text, map_text, record_key, text_fields


def _view(rec):
    return [(f.path, f.side, f.text) for f in text_fields(rec)]


def test_alpaca_fields_and_sides():
    rec = {"system": "S", "instruction": "I", "input": "X", "output": "O", "history": [["q", "a"]], "id": 7}
    assert _view(rec) == [(("system",), "system", "S"), (("history", 0, 0), "input", "q"),
                          (("history", 0, 1), "output", "a"), (("instruction",), "input", "I"),
                          (("input",), "input", "X"), (("output",), "output", "O")]


def test_sharegpt_messages_preference_classification():
    sg = {"conversations": [{"from": "human", "value": "h"}, {"from": "gpt", "value": "g"}],
          "chosen": {"from": "gpt", "value": "c"}, "rejected": {"from": "gpt", "value": "r"}}
    assert [(f.side, f.text) for f in text_fields(sg)] == [("input", "h"), ("output", "g"), ("output", "c"),
                                                           ("output", "r")]
    msgs = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                         {"role": "assistant", "content": "a"}], "label": True}
    assert [(f.side, f.text) for f in text_fields(msgs)] == [("system", "s"), ("input", "u"), ("output", "a")]
    assert [(f.side, f.text) for f in text_fields({"text": "t", "label": "体育"})] == [("input", "t")]
    assert [(f.side, f.text) for f in text_fields({"prompt": "p", "chosen": "c", "rejected": "r"})] == [
        ("input", "p"), ("output", "c"), ("output", "r")]


def test_map_text_changes_only_text_on_chosen_sides_and_copies():
    rec = {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}],
           "label": "x", "record_id": "r1"}
    new = map_text(rec, lambda f: f.text.upper(), sides=["input"])
    assert new == {"messages": [{"role": "user", "content": "U"}, {"role": "assistant", "content": "a"}],
                   "label": "x", "record_id": "r1"}
    assert rec["messages"][0]["content"] == "u"  # the original is untouched


def test_record_key_normalizes_but_keeps_roles():
    a = {"instruction": "Hello   World", "output": "ＯＫ"}
    assert record_key(a) == record_key({"instruction": "hello world", "output": "ok"})
    assert record_key(a) != record_key({"instruction": "ＯＫ", "output": "Hello World"})


def test_cjk_share_and_join():
    assert cjk_share("你好ab") == 0.5
    assert cjk_share("123 !!") == 0.0
    assert join_text("你好", "世界") == "你好世界"
    assert join_text("Hello,", "world") == "Hello, world"
