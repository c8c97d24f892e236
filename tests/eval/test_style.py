"""tunelab.eval.style: rep-n, marker share and the style report, on answers counted by hand."""

from __future__ import annotations

import pytest

from tunelab.eval.style import marker_share, ngram_repetition, style_report, units


def test_units_split_cjk_by_character_and_other_scripts_by_word() -> None:
    assert units("臣妾不敢。Hello, world 42") == ["臣", "妾", "不", "敢", "。", "Hello", ",", "world", "42"]


def test_rep4_on_hand_counted_answers() -> None:
    assert ngram_repetition("臣妾不敢。") == 0.0  # 5 units, 2 distinct 4-grams
    assert ngram_repetition("短") == 0.0  # fewer than 4 units: nothing to repeat
    # 皇上 x 8 = 16 characters: 13 4-grams, only 2 distinct (皇上皇上, 上皇上皇) -> 1 - 2/13
    assert ngram_repetition("皇上" * 8) == pytest.approx(1 - 2 / 13)
    # "a b c d a b c d": 5 word 4-grams, 4 distinct -> 1 - 4/5
    assert ngram_repetition("a b c d a b c d") == pytest.approx(0.2)
    assert ngram_repetition("a b a b", n=2) == pytest.approx(1 - 2 / 3)
    with pytest.raises(ValueError, match="n must be >= 1"):
        ngram_repetition("x", n=0)


def test_marker_share_and_report() -> None:
    answers = ["臣妾不敢。", "皇上" * 8, "I am a chatbot."]
    assert marker_share(answers) == pytest.approx(2 / 3)
    assert marker_share(answers, markers=["chatbot"]) == pytest.approx(1 / 3)
    report = style_report(answers, finished=[True, False, True])
    assert report["rep4_mean"] == pytest.approx((0 + (1 - 2 / 13) + 0) / 3)
    assert report["rep4_max"] == pytest.approx(1 - 2 / 13)
    assert report["loops"] == pytest.approx(1 / 3) and report["ended_share"] == pytest.approx(2 / 3)
    assert "ended_share" not in style_report(answers)
    # an answer that echoes the question's 皇上 is not in character; 臣妾 of her own is
    asked = ["皇上万安", "皇上，你说", "你是谁"]
    assert marker_share(["皇上万安", "臣妾在，皇上", "臣妾"], prompts=asked) == pytest.approx(2 / 3)
    assert style_report(answers, prompts=asked)["own_marker_share"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="1 entries for 3 answers"):
        marker_share(answers, prompts=["x"])
    with pytest.raises(ValueError, match="2 flags for 3 answers"):
        style_report(answers, finished=[True, True])
