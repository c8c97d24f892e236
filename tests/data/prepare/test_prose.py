"""Dialogue from prose: the quote finder, rule attribution and model attribution on a hand-labelled passage.

fixtures/prose_sample.txt was written for these tests (it is not from any book); its 16 quotes are
labelled by hand in fixtures/prose_sample.labels.json.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunelab.data.prepare.prose import (
    NONE_OF_THEM,
    Quote,
    attribute,
    find_quotes,
    rule_speaker,
    score_attribution,
    to_script,
)

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def sample():
    labels = json.loads((FIXTURES / "prose_sample.labels.json").read_text(encoding="utf-8"))
    return (FIXTURES / "prose_sample.txt").read_text(encoding="utf-8"), labels["cast"], labels["quotes"]


class Oracle:
    """Answers from the hand labels, reading the marked quote out of the prompt (checks prompt and mapping)."""

    def __init__(self, gold, cast):
        self.gold, self.cast, self.prompts = {g["text"]: g["speaker"] for g in gold}, cast, []

    def choose(self, prompts, options):
        self.prompts += prompts
        out = []
        for p in prompts:
            quoted = re.search(r">> [“「『\"](.+?)[”」』\"] <<", p[-1]["content"]).group(1)
            listed = re.findall(r"^(\d+)\. (.+)$", p[-1]["content"], flags=re.M)
            out.append(next(n for n, name in listed if name == self.gold[quoted]))
        return out


def test_finder_gets_every_labelled_quote_in_order(sample):
    text, _, gold = sample
    _, quotes = find_quotes(text)
    assert [q.text for q in quotes] == [g["text"] for g in gold]


def test_rules_attribute_only_explicit_quotes_and_never_wrongly(sample):
    text, cast, gold = sample
    paras, quotes = attribute(text, cast)
    score = score_attribution(quotes, gold)
    # measured: 4 of 16 quotes have a cast name + speech verb next to them; each of those is right
    assert score["quote_recall"] == 1.0 and score["by_rule"] == 4 and score["precision"] == 1.0
    assert score["accuracy"] == pytest.approx(4 / 16)


def test_model_fills_the_rest_with_a_numbered_cast(sample):
    text, cast, gold = sample
    oracle = Oracle(gold, cast)
    _, quotes = attribute(text, cast, oracle)
    score = score_attribution(quotes, gold)
    assert score["accuracy"] == 1.0 and (score["by_rule"], score["by_model"]) == (4, 12)
    assert len(oracle.prompts) == 24  # each open quote asked with the cast in order and reversed
    first = oracle.prompts[0][-1]["content"]
    assert f"{len(cast) + 1}. {NONE_OF_THEM}" in first and ">> “这么晚了，还有客人。” <<" in first
    assert "林秋推开茶馆的门" in first  # the paragraph before is context
    # and the script pipeline turns the attributed exchange into persona records
    from tunelab.data.prepare.dialogue import extract_dialogue

    paras, quotes = attribute(text, cast, Oracle(gold, cast))
    records = extract_dialogue(to_script(paras, quotes), "林秋").kept
    assert records[0] == {"instruction": "这么晚了，还有客人。", "input": "", "output": "一壶龙井，再来一碟花生。"}
    assert {"instruction": "他在哪里？", "input": "", "output": "不知道，三年没有消息了。"} in records


class NoneJudge:
    def choose(self, prompts, options):
        return [options[-1] if i % 2 else None for i, _ in enumerate(prompts)]  # "none of them" or no answer


def test_none_of_them_and_unparsed_replies_leave_quotes_out(sample):
    text, cast, gold = sample
    paras, quotes = attribute(text, cast, NoneJudge())
    assert score_attribution(quotes, gold)["by_model"] == 0
    script = to_script(paras, quotes)
    assert script.splitlines() == ["林秋：一壶龙井，再来一碟花生。", "# scene", "林秋：不知道，",
                                   "林秋：三年没有消息了。", "船夫：上船了！"]


class FirstJudge:
    """Pure position bias: always the first listed speaker."""

    def choose(self, prompts, options):
        return ["1"] * len(prompts)


def test_swapped_cast_order_makes_a_position_biased_model_abstain(sample):
    text, cast, gold = sample
    _, quotes = attribute(text, cast, FirstJudge())
    assert score_attribution(quotes, gold)["by_model"] == 0  # "1" names 林秋, then 船夫: they disagree
    _, quotes = attribute(text, cast, FirstJudge(), swap=False)
    score = score_attribution(quotes, gold)
    assert score["by_model"] == 12 and all(q.speaker == "林秋" for q in quotes if q.by == "model")
    assert score["accuracy"] == pytest.approx((4 + 3) / 16)  # 3 of the 12 open quotes are 林秋's


def test_local_model_attribution_is_always_a_cast_member_or_none(sample):
    from tunelab.eval.judge import LocalJudge
    from tunelab.models import load_model
    from tunelab.models.tiny import tiny_tokenizer

    text, cast, gold = sample
    tok = tiny_tokenizer()
    judge = LocalJudge(load_model("tiny-llama").eval(), tok, tok.chat_template, "tiny")
    _, quotes = attribute(text, cast, judge, model_all=True)
    assert all(q.speaker in (*cast, None) for q in quotes)
    assert score_attribution(quotes, gold)["by_rule"] == 0  # model_all: the rules are skipped


def test_rule_speaker_english_and_chinese():
    cast = ["Anna", "Mr. Bell", "甄嬛"]

    def speaker(para):
        _, quotes = find_quotes(para)
        return rule_speaker(para, quotes[0], cast)

    assert speaker('"Close the door," said Anna.') == "Anna"
    assert speaker('Mr. Bell replied, "Not yet."') == "Mr. Bell"
    assert speaker('"Fine," Anna whispered.') == "Anna"
    assert speaker('甄嬛微微一笑，道：“是。”') is None  # the comma: too far to be sure
    assert speaker('甄嬛笑道：“是。”') == "甄嬛"
    assert speaker('"Who?" He looked at Anna.') is None


def test_to_script_cuts_scenes_at_headings_and_narration():
    paras = ["A：", "第二章", "x"]
    quotes = [Quote("hi", 0, 0, 1, "林秋", "rule"), Quote("yo", 2, 0, 1, "阿远", "rule")]
    assert to_script(paras, quotes) == "林秋：hi\n# scene\n阿远：yo\n"


def test_extract_dialogue_prose_cli(sample, tmp_path):
    from tunelab.cli import app

    text, cast, gold = sample
    novel = tmp_path / "novel.txt"
    novel.write_text(text, encoding="utf-8")
    out, script = tmp_path / "linqiu.json", tmp_path / "attributed.txt"
    res = CliRunner().invoke(app, ["data", "extract-dialogue", str(novel), "--character", "林秋", "--prose",
                                   "--speakers", ",".join(cast), "--script-out", str(script), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "16 quotes, 4 attributed by rule" in res.output
    records = json.loads(out.read_text(encoding="utf-8"))
    # rules only: the one exchange they recover is 林秋 answering no one (first in scene), so no record
    assert records == [] and "林秋：不知道，" in script.read_text(encoding="utf-8")
    res = CliRunner().invoke(app, ["data", "extract-dialogue", str(novel), "--character", "林秋", "--prose"])
    assert res.exit_code != 0 and "--speakers" in res.output
