"""Eval results written within one second get distinct names instead of overwriting each other."""

from __future__ import annotations

import re

from tunelab.utils.io import atomic_write_json, stamped_path


def test_second_result_in_the_same_second_gets_a_new_name(tmp_path, monkeypatch):
    import tunelab.utils.io as io

    class Frozen(io._dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2026, 11, 25, 12, 0, 0)

    monkeypatch.setattr(io._dt, "datetime", Frozen)
    first = stamped_path(tmp_path, "val")
    assert first.name == "val-20261125-120000.json"
    atomic_write_json(first, {"n": 1})
    second = stamped_path(tmp_path, "val")
    assert second.name == "val-20261125-120000-2.json"
    second.with_suffix(".predictions.jsonl").write_text("")   # a companion file alone also takes the name
    assert stamped_path(tmp_path, "val").name == "val-20261125-120000-3.json"
    assert re.fullmatch(r"x-\d{8}-\d{6}\.json", stamped_path(tmp_path / "new", "x").name)
