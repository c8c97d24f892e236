"""split: sizes, determinism, stratification on real 4-class data, no overlap."""

from collections import Counter

import pytest

from tunelab.data.io import DataError, read_records
from tunelab.data.prepare import split


def _rows(n):
    return [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(n)]


def test_sizes_and_partition():
    res = split(_rows(100), val=0.15, test=0.1, seed=1)
    assert {k: len(v) for k, v in res.parts.items()} == {"train": 75, "val": 15, "test": 10}
    all_idx = res.indices["train"] + res.indices["val"] + res.indices["test"]
    assert sorted(all_idx) == list(range(100))  # every record once: no overlap, nothing lost
    assert res.stratified_by is None


def test_seed_determinism():
    a, b, c = (split(_rows(200), seed=s) for s in (7, 7, 8))
    assert a.indices == b.indices
    assert a.indices["val"] != c.indices["val"]


def test_stratified_on_fudan_news(shared_data, tmp_path):
    rows = read_records(shared_data / "fudan_news_train.jsonl")
    res = split(rows, val=0.15, test=0.1, seed=42)
    assert res.stratified_by == "label"
    # 4 classes x 80 records: per class round(80*0.15)=12 val, round(80*0.1)=8 test, 60 train.
    for part, per_class in (("train", 60), ("val", 12), ("test", 8)):
        counts = Counter(r["label"] for r in res.parts[part])
        assert counts == {lab: per_class for lab in ("政治", "财经", "体育", "计算机")}
    ids = {p: {r["record_id"] for r in v} for p, v in res.parts.items()}
    assert not ids["train"] & ids["val"] and not ids["train"] & ids["test"] and not ids["val"] & ids["test"]
    paths = res.write(tmp_path, ".jsonl")
    reloaded = {p: [r.data for r in read_records(path)] for p, path in paths.items()}
    assert reloaded == res.parts


def test_stratify_key_missing_names_the_record():
    rows = read_records_like([{"text": "a", "category": "x"}, {"text": "b", "label": "y"}])
    with pytest.raises(DataError, match=r"f.jsonl:2: field 'category' is missing"):
        split(rows, stratify="category")


def read_records_like(dicts):
    from tunelab.data.io import Record
    return [Record(d, f"f.jsonl:{i + 1}") for i, d in enumerate(dicts)]


def test_bad_fractions():
    with pytest.raises(ValueError, match="val \\+ test < 1"):
        split(_rows(10), val=0.6, test=0.5)
