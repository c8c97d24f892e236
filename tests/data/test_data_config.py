"""The data section: a single path stays a path; lists of sources validate with clear messages."""

from __future__ import annotations

import pytest

from tunelab.config import ConfigError
from tunelab.config.loader import build_config


def test_single_path_is_unchanged_and_lists_become_sources():
    cfg = build_config({"data": {"train": "a.json"}}, "x.yaml")
    assert cfg.data.train == "a.json" and cfg.data.train_label() == "a.json"
    assert [(s.path, s.weight) for s in cfg.data.sources()] == [("a.json", 1.0)]
    assert not cfg.data.packing and not cfg.data.skip_invalid and cfg.data.cache
    cfg = build_config({"data": {"train": [{"path": "a.json", "weight": 0.8, "format": "sharegpt"},
                                           "b.json"]}}, "x.yaml")
    assert [(s.path, s.weight, s.format) for s in cfg.data.sources()] == [("a.json", 0.8, "sharegpt"),
                                                                           ("b.json", 1.0, None)]
    assert cfg.data.train_label() == "a.json + b.json"


@pytest.mark.parametrize(("train", "message"), [
    ([{"path": "a.json", "wieght": 2}], "data.train[0].wieght: unknown key; valid keys: path, weight, format, columns"),
    ([{"path": "a.json"}, {"path": "b.json", "weight": 0}], "data.train[1].weight: Input should be greater than 0"),
    ([], "data.train: value should have at least 1 item"),
])
def test_bad_sources_name_the_entry(train, message):
    with pytest.raises(ConfigError) as e:
        build_config({"data": {"train": train}}, "x.yaml")
    assert message in str(e.value)
