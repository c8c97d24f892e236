"""clean: text normalization steps and drop reasons, with nothing silently lost."""

import unicodedata

import pytest

from tunelab.data.io import Record
from tunelab.data.prepare import clean, clean_text
from tunelab.data.prepare.clean import normalize_unicode, strip_html


def test_clean_text_steps():
    raw = "  <p>Tom&nbsp;&amp;&#32;Jerry</p><br/>ｆｕｌｌ\u200bwidth\x07 \t tab\r\n\n\n\nend  "
    assert clean_text(raw) == "Tom & Jerry\n\nfullwidth tab\n\nend"


def test_nfkc_matches_unicodedata_and_cjk_punct_option():
    text = "ｆｉ ﬁ ①，你好：（测试）！"
    assert normalize_unicode(text) == unicodedata.normalize("NFKC", text)
    kept = normalize_unicode(text, keep_cjk_punct=True)
    assert kept == "fi fi 1，你好：（测试）！"


def test_html_keeps_comparisons_and_drops_scripts():
    assert strip_html("x < y and a <= b") == "x < y and a <= b"
    assert strip_html("a<script>alert(1)</script>b<!-- c -->d &lt;tag&gt;") == "abd <tag>"


def test_drop_reasons_positions_and_counts():
    rows = [Record({"instruction": "hi there", "output": "hello"}, "d.jsonl:1"),
            Record({"instruction": "  ", "output": "<br>"}, "d.jsonl:2"),
            Record({"instruction": "question", "output": "   "}, "d.jsonl:3"),
            Record({"text": "ab"}, "d.jsonl:4"),
            Record({"text": "x" * 50}, "d.jsonl:5"),
            Record({"label": 1}, "d.jsonl:6"),
            Record({"text": "<b>bold</b> text"}, "d.jsonl:7")]
    res = clean(rows, min_chars=3, max_chars=20)
    assert res.kept == [{"instruction": "hi there", "output": "hello"}, {"text": "bold text"}]
    assert [(r["position"], r["index"], r["reason"]) for r in res.rejected] == [
        ("d.jsonl:2", 1, "empty"), ("d.jsonl:3", 2, "empty_output"), ("d.jsonl:4", 3, "too_short"),
        ("d.jsonl:5", 4, "too_long"), ("d.jsonl:6", 5, "no_text")]
    assert res.rejected[3]["detail"] == "50 characters > max_chars=20"
    assert res.rejected[0]["record"] == {"instruction": "  ", "output": "<br>"}  # the original, not the cleaned one
    assert res.counts == {"input": 7, "kept": 2, "modified": 1, "empty": 1, "empty_output": 1, "too_short": 1,
                          "too_long": 1, "no_text": 1}
    assert res.counts["input"] == len(res.kept) + len(res.rejected)


def test_all_formats_are_cleaned():
    rec = {"conversations": [{"from": "human", "value": "<i>Hi</i>  there"}, {"from": "gpt", "value": "ok&amp;"}],
           "tools": "<keep>"}
    assert clean([rec]).kept == [{"conversations": [{"from": "human", "value": "Hi there"},
                                                    {"from": "gpt", "value": "ok&"}], "tools": "<keep>"}]


def test_bad_thresholds():
    with pytest.raises(ValueError, match="min_chars <= max_chars"):
        clean([], min_chars=10, max_chars=5)
    with pytest.raises(ValueError, match="unknown cleaning step"):
        clean_text("x", steps=["nope"])


def test_code_indentation_and_scripts_are_kept():
    text = ("Use the `<hr>` tag:\n```html\n<hr  class=\"x\">\n```\n- item\n    - nested   item  \n\n\n\n"
            "x² + H₂O &lt;b&gt;")
    assert clean_text(text) == ("Use the `<hr>` tag:\n```html\n<hr  class=\"x\">\n```\n- item\n    - nested item\n\n"
                                "x² + H₂O <b>")
