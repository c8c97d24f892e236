"""prepare_data: tokenization cache, mixtures with weights, skip_invalid and clear errors."""

from __future__ import annotations

import copy
import json

import pytest

from tunelab.config.data import DataCfg
from tunelab.data import cache as tcache
from tunelab.data.io import DataError
from tunelab.data.packing import PackedRow
from tunelab.data.pipeline import mixture_counts, prepare_data
from tunelab.data.templates import NAMED_TEMPLATES, resolve_template


@pytest.fixture()
def cache_home(tmp_path, monkeypatch):
    monkeypatch.setattr(tcache, "tokenized_root", lambda: tmp_path / "cache" / "tokenized")
    return tmp_path / "cache"


@pytest.fixture()
def alpaca_file(tmp_path, shared_data):
    rows = json.loads((shared_data / "llamafactory_demo/alpaca_en_demo.json").read_text())[:12]
    path = tmp_path / "a.json"
    path.write_text(json.dumps(rows))
    return path


def _prep(path, tok, template=None, **kw):
    cfg = DataCfg(train=str(path), max_length=kw.pop("max_length", 64), val_size=0.25, **kw)
    return prepare_data(cfg, tok, template or resolve_template(tok, None), seed=1)


def test_second_run_hits_the_cache_with_identical_data(cache_home, alpaca_file, tiny_tokenizer):
    first = _prep(alpaca_file, tiny_tokenizer)
    assert first.stats["cache"] == "miss"
    (entry,) = (cache_home / "tokenized").iterdir()
    assert sorted(p.name for p in entry.iterdir()) == ["meta.json", "tokens.safetensors"]
    second = _prep(alpaca_file, tiny_tokenizer)
    assert second.stats["cache"] == "hit"
    assert [(s.input_ids, s.labels, s.truncated) for s in second.train] == \
        [(s.input_ids, s.labels, s.truncated) for s in first.train]
    assert [c.messages for c in second.val_conversations] == [c.messages for c in first.val_conversations]
    assert {k: v for k, v in second.stats.items() if k != "cache"} == \
        {k: v for k, v in first.stats.items() if k != "cache"}


def test_any_key_part_changing_tokenizes_again(cache_home, alpaca_file, tiny_tokenizer):
    base = _prep(alpaca_file, tiny_tokenizer)
    assert _prep(alpaca_file, tiny_tokenizer).stats["cache"] == "hit"
    assert _prep(alpaca_file, tiny_tokenizer, max_length=48).stats["cache"] == "miss"
    assert _prep(alpaca_file, tiny_tokenizer, template=NAMED_TEMPLATES["alpaca"]).stats["cache"] == "miss"
    other_tok = copy.deepcopy(tiny_tokenizer)
    other_tok.add_tokens(["<brand_new_token>"])
    assert _prep(alpaca_file, other_tok).stats["cache"] == "miss"
    rows = json.loads(alpaca_file.read_text())
    rows[0]["output"] = "Edited: " + rows[0]["output"]
    alpaca_file.write_text(json.dumps(rows))
    changed = _prep(alpaca_file, tiny_tokenizer)
    assert changed.stats["cache"] == "miss"
    assert [s.input_ids for s in changed.train + changed.val] != [s.input_ids for s in base.train + base.val]
    packed = _prep(alpaca_file, tiny_tokenizer, packing=True, max_length=128)
    assert packed.stats["cache"] == "miss"
    again = _prep(alpaca_file, tiny_tokenizer, packing=True, max_length=128)
    assert again.stats["cache"] == "hit"
    assert all(isinstance(r, PackedRow) for r in again.train)
    assert [r.lengths for r in again.train] == [r.lengths for r in packed.train]
    assert _prep(alpaca_file, tiny_tokenizer, cache=False).stats["cache"] == "off"


def test_mixture_counts_follow_weights_without_repeats():
    assert mixture_counts([1000, 10000], [0.8, 0.2]) == [1000, 250]
    assert mixture_counts([100, 30], [1, 1]) == [30, 30]


def test_weighted_sources_mix_in_the_configured_ratio(cache_home, shared_data, tmp_path, tiny_tokenizer):
    task = shared_data / "llamafactory_demo/alpaca_en_demo.json"
    general = shared_data / "llamafactory_demo/alpaca_zh_demo.json"
    task_rows = json.loads(task.read_text())
    cfg = DataCfg(train=[{"path": str(task), "weight": 0.8}, {"path": str(general), "weight": 0.2}],
                  max_length=32, val_size=0.0)
    data = prepare_data(cfg, tiny_tokenizer, resolve_template(tiny_tokenizer, None), seed=0)
    n_task = len(task_rows)
    assert data.stats["sources"] == {str(task): n_task, str(general): round(n_task / 4)}
    assert data.stats["train_samples"] == n_task + round(n_task / 4)
    assert data.stats["format"] == "alpaca"
    # a single string keeps meaning exactly one file, in file order
    assert DataCfg(train=str(task)).sources()[0].path == str(task)


def test_skip_invalid_counts_and_writes_rejects(cache_home, tmp_path, tiny_tokenizer):
    f = tmp_path / "d.jsonl"
    good = {"instruction": "Say hi", "output": "Hi!"}
    f.write_text("\n".join(json.dumps(r) for r in [good, {"instruction": "no answer"}, good,
                                                   {"messages": [{"role": "user", "content": "q"}]}, good]) + "\n")
    with pytest.raises(DataError, match=r"d.jsonl:2: field 'output' is missing"):
        _prep(f, tiny_tokenizer)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cfg = DataCfg(train=str(f), skip_invalid=True, val_size=0.0)
    data = prepare_data(cfg, tiny_tokenizer, resolve_template(tiny_tokenizer, None), seed=0, run_dir=run_dir)
    assert data.stats["train_samples"] == 3 and data.stats["rejected"] == 2
    rejects = [json.loads(line) for line in (run_dir / "rejected.jsonl").read_text().splitlines()]
    assert [r["where"] for r in rejects] == [f"{f}:2", f"{f}:4"]
    assert "field 'output' is missing" in rejects[0]["error"]
    # a cache hit still writes the side file for the new run
    run2 = tmp_path / "run2"
    run2.mkdir()
    again = prepare_data(cfg, tiny_tokenizer, resolve_template(tiny_tokenizer, None), seed=0, run_dir=run2)
    assert again.stats["cache"] == "hit" and (run2 / "rejected.jsonl").read_text() == \
        (run_dir / "rejected.jsonl").read_text()


def test_nothing_left_is_a_clear_error(cache_home, tmp_path, tiny_tokenizer):
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps({"instruction": "x"}) + "\n")
    with pytest.raises(DataError, match=r"no training samples left after filtering.*1 records rejected"):
        prepare_data(DataCfg(train=str(f), skip_invalid=True, val_size=0.0), tiny_tokenizer,
                     resolve_template(tiny_tokenizer, None), seed=0)
