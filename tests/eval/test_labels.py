"""Label data: answers -> labels, and classification metrics when some answers name no label."""

from __future__ import annotations

import pytest

from tunelab.eval.labels import OTHER, extract_label, label_set, softmax, to_label
from tunelab.eval.metrics import classification_metrics

pytest.importorskip("sklearn")


def test_extract_and_map_labels():
    assert extract_label("\\boxed{体育}") == "体育"
    assert extract_label("思考……答案是 \\boxed{财经}，不是 \\boxed{政治}") == "政治"  # the last box counts
    assert extract_label("  Positive ") == "positive"
    labels = ["体育", "政治", "财经"]
    assert to_label("\\boxed{体育}", labels) == "体育"
    assert to_label("这篇新闻属于财经类", labels) == "财经"  # no box, but exactly one label mentioned
    assert to_label("体育还是财经？", labels) == OTHER  # two labels mentioned: ambiguous
    assert to_label("", labels) == OTHER


def test_label_set_from_references():
    labels, texts = label_set(["\\boxed{b}", "\\boxed{a}", "\\boxed{b}"])
    assert labels == ["a", "b"] and texts == {"b": "\\boxed{b}", "a": "\\boxed{a}"}
    with pytest.raises(ValueError, match="at least two distinct labels"):
        label_set(["\\boxed{a}", "\\boxed{a}"])


def test_other_predictions_count_as_wrong_and_stay_out_of_the_macro_average():
    from sklearn.metrics import accuracy_score, f1_score

    y_true = ["a", "b", "c", "a", "b"]
    y_pred = ["a", "junk", "c", "b", "b"]
    m = classification_metrics(y_true, y_pred, ["a", "b", "c"], other=OTHER)
    assert m["n_other"] == 1
    assert m["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert m["f1_macro"] == pytest.approx(f1_score(y_true, y_pred, labels=["a", "b", "c"], average="macro"))
    assert m["confusion_matrix"] == [[1, 1, 0, 0], [0, 1, 0, 1], [0, 0, 1, 0], [0, 0, 0, 0]]
    with pytest.raises(ValueError, match="y_pred has label"):
        classification_metrics(y_true, y_pred, ["a", "b", "c"])


def test_softmax_is_stable():
    assert softmax([-1000.0, -1000.0]) == pytest.approx([0.5, 0.5])
    assert sum(softmax([1.0, 2.0, 3.0])) == pytest.approx(1.0)
