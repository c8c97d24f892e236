"""augment: each operation's effect, input-side-only default, determinism, offline resources."""

import random
from collections import Counter

import pytest

from tunelab.data.prepare import augment
from tunelab.data.prepare.augment import (random_delete, random_insert, reorder, synonym_replace, synonym_table,
                                          tokenize)

ZH = "我今天非常高兴，因为天气很好。我们一起去公园吧！"
EN = "I am very happy today. The weather is nice, so we should go to the park!"


def test_synonym_table_is_symmetric_and_offline():
    table = synonym_table()
    assert "开心" in table["高兴"] and "高兴" in table["开心"]
    assert "glad" in table["happy"] and "happy" in table["glad"]
    assert all(w not in others for w, others in table.items())


def test_tokenize_round_trips_and_uses_jieba_for_chinese():
    for text in (ZH, EN, "混合 text，with 标点！\n新行"):
        assert "".join(tokenize(text)) == text
    import jieba

    assert tokenize("天气很好") == jieba.Tokenizer().lcut("天气很好")


def test_synonym_replace_rate_one_replaces_every_known_word():
    rng = random.Random(0)
    out = synonym_replace(ZH, rng, 1.0)
    table = synonym_table()
    assert out != ZH
    # every word with synonyms was swapped for one of them; the rest is unchanged
    for a, b in zip(tokenize(ZH), tokenize(out)):
        if a in table:
            assert b in table[a]
    assert synonym_replace(EN, random.Random(0), 1.0).startswith("I am ")
    assert synonym_replace(EN, random.Random(0), 0.0) == EN


def test_delete_keeps_punctuation_and_one_word():
    assert random_delete("Hello, world!", random.Random(0), 1.0) in ("Hello!", ", world!", "Hello,!")
    out = random_delete(ZH, random.Random(1), 0.5)
    assert Counter(c for c in out if c in "，。！") == Counter(c for c in ZH if c in "，。！")
    assert len(out) < len(ZH)


def test_insert_adds_known_synonyms():
    out = random_insert(EN, random.Random(3), 0.2)
    added = Counter(out.split()) - Counter(EN.split())
    assert sum(added.values()) == round(0.2 * 15)
    table = synonym_table()
    assert all(w.casefold() in table for w in added)


def test_reorder_keeps_the_same_sentences():
    out = reorder(ZH, random.Random(2), 1.0)
    assert sorted(out) == sorted(ZH) and out != ZH
    assert out.endswith("！")  # punctuation positions do not move
    en = reorder("One. Two. Three.", random.Random(0), 1.0)
    assert sorted(en.split()) == sorted("One. Two. Three.".split())


def test_augment_changes_only_the_input_side_and_is_seeded():
    recs = [{"instruction": ZH, "input": "", "output": "很高兴听到这个消息。", "label": "x"}]
    res = augment(recs, ops=["synonym", "delete"], rate=0.5, copies=2, seed=5)
    assert res.kept[0] == recs[0]
    assert len(res.kept) == 1 + res.counts["augmented"] and res.counts["augmented"] >= 3
    for new in res.kept[1:]:
        assert new["output"] == recs[0]["output"] and new["label"] == "x" and new["instruction"] != ZH
    again = augment(recs, ops=["synonym", "delete"], rate=0.5, copies=2, seed=5)
    assert again.kept == res.kept
    # an operation's copies do not depend on which other operations run
    alone = augment(recs, ops=["delete"], rate=0.5, copies=2, seed=5)
    assert [r for r in res.kept if r in alone.kept[1:]] == alone.kept[1:]
    both = augment(recs, ops=["synonym"], rate=1.0, sides=("input", "output"))
    assert both.kept[1]["output"] != recs[0]["output"]


def test_unchanged_copies_are_not_added_and_bad_args():
    res = augment([{"text": "xyz qqq", "label": 0}], ops=["synonym"], rate=1.0, keep_original=False)
    assert res.kept == [] and res.counts["unchanged"] == 1
    with pytest.raises(ValueError, match="unknown augmentation"):
        augment([], ops=["paraphrase"])
    with pytest.raises(ValueError, match="rate"):
        augment([], rate=2.0)
