"""dedup: exact duplicates on real data, near duplicates against brute-force Jaccard."""

import json
import random

import pytest

from tunelab.data.io import read_records
from tunelab.data.prepare import dedup, shingles
from tunelab.data.prepare.text import record_text


def test_huanhuan_exact_duplicates(shared_data):
    rows = read_records(shared_data / "huanhuan.json")
    res = dedup(rows, mode="exact")
    # SOURCES.md: 3,729 records, 3,617 unique (independently: distinct JSON serializations).
    unique = {json.dumps(r.data, sort_keys=True, ensure_ascii=False) for r in rows}
    assert len(unique) == 3617
    assert res.counts == {"input": 3729, "kept": 3617, "exact": 112}
    assert len(res.kept) == 3617 and len(res.rejected) == 112
    first = {}
    for i, r in enumerate(rows):
        first.setdefault(json.dumps(r.data, sort_keys=True, ensure_ascii=False), i)
    for row in res.rejected:
        j = row["duplicate_of_index"]
        assert j < row["index"] and rows[j].data == row["record"]
        assert first[json.dumps(row["record"], sort_keys=True, ensure_ascii=False)] == j
        assert row["duplicate_of"] == rows[j].where and row["position"] == rows[row["index"]].where
    # "both" still reports the same 112 exact copies; near duplicates come on top.
    both = dedup(rows, mode="both")
    assert both.counts["exact"] == 112 and both.counts["kept"] + both.counts["near"] == 3617


def _jaccard(a, b):
    return len(a & b) / len(a | b)


def test_shingles_pick_chars_for_chinese_words_for_english():
    assert shingles("今天天气", char_ngram=2) == {"今天", "天天", "天气"}
    assert shingles("The cat sat on it", word_ngram=2) == {"the cat", "cat sat", "sat on", "on it"}
    assert shingles("Hi", word_ngram=3) == {"hi"}


def _variants():
    rng = random.Random(0)
    en_words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma".split()
    zh = "春眠不觉晓处处闻啼鸟夜来风雨声花落知多少床前明月光疑是地上霜举头望明月低头思故乡"
    records = []
    for k in range(12):
        words = [rng.choice(en_words) + str(rng.randrange(50)) for _ in range(40)]
        records.append({"text": " ".join(words)})
        near = words[:]
        near[-1] = "changed"
        records.append({"text": " ".join(near)})  # last word changed: Jaccard 37/39
        chars = "".join(rng.choice(zh) for _ in range(60))
        records.append({"text": chars})
        records.append({"text": chars[:-1] + "变"})  # last character changed
    return records


def test_near_duplicates_match_brute_force_jaccard():
    records = _variants()
    res = dedup(records, mode="near", threshold=0.8, num_perm=256)
    sets = [shingles(record_text(r)) for r in records]
    truth_removed = set()
    kept_idx = []
    for i, s in enumerate(sets):  # brute force: first occurrence kept, removed if close to an earlier kept one
        if any(_jaccard(s, sets[j]) >= 0.8 for j in kept_idx):
            truth_removed.add(i)
        else:
            kept_idx.append(i)
    assert len(truth_removed) == 24
    assert {r["index"] for r in res.rejected} == truth_removed
    for row in res.rejected:
        true = _jaccard(sets[row["index"]], sets[row["duplicate_of_index"]])
        assert row["reason"] == "near" and abs(row["similarity"] - true) < 0.1
    assert res.kept == [records[i] for i in kept_idx]


def test_labels_do_not_make_records_different_and_bad_args():
    recs = [{"text": "same", "label": 1, "record_id": "a"}, {"text": "same", "label": 2, "record_id": "b"}]
    res = dedup(recs, mode="exact")
    assert res.counts["exact"] == 1
    assert res.rejected[0]["duplicate_of_id"] == "a" and res.rejected[0]["duplicate_of"] == "record[0]"
    with pytest.raises(ValueError, match="threshold"):
        dedup(recs, threshold=0)
    with pytest.raises(ValueError, match="mode"):
        dedup(recs, mode="fuzzy")
