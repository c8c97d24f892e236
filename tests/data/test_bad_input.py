"""Data that cannot train stops before training with a clear message."""

import json

import pytest

import tunelab
from tunelab.data.io import DataError


def test_classification_with_one_class_is_refused(tmp_path):
    data = tmp_path / "one_class.jsonl"
    data.write_text("".join(json.dumps({"text": f"news item {i}", "label": "sports"}) + "\n" for i in range(6)))
    with pytest.raises(DataError, match="classification needs at least 2 classes, found \\['sports'\\]"):
        tunelab.train({"model": {"name": "tiny-llama"}, "stage": "classify",
                       "data": {"train": str(data), "val_size": 0},
                       "train": {"max_steps": 1, "batch_size": 2}, "output_dir": str(tmp_path / "run")},
                      progress=False)
    assert not (tmp_path / "run" / "summary.json").exists()
