"""Metrics against independent references: sacrebleu's documented example, rouge-score, sklearn, hand counts."""

from __future__ import annotations

import math

import pytest

from tunelab.eval.metrics import (
    GENERATION_METRICS,
    bleu4,
    classification_metrics,
    contains,
    detect_lang,
    exact_match,
    generation_metrics,
    perplexity,
    rouge,
)

sacrebleu = pytest.importorskip("sacrebleu")
rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
skm = pytest.importorskip("sklearn.metrics")


def test_bleu4_matches_sacrebleu_documented_example():
    # sacrebleu README: BLEU = 48.53 82.4/50.0/45.5/37.5 (two references per sentence)
    sys = ["The dog bit the man.", "It wasn't surprising.", "The man had just bitten him."]
    refs = [["The dog bit the man.", "The dog had bit the man."],
            ["It was not unexpected.", "No one was surprised."],
            ["The man bit him first.", "The man had bitten the dog."]]
    assert bleu4(sys, refs)["bleu4"] == pytest.approx(48.53, abs=0.005)


def test_bleu4_single_reference_equals_sacrebleu():
    preds = ["the cat sat on the mat", "a quick brown fox jumps"]
    refs = ["the cat is on the mat", "the quick brown fox jumped over"]
    want = sacrebleu.corpus_bleu(preds, [refs]).score
    assert bleu4(preds, refs)["bleu4"] == pytest.approx(want)


def test_bleu4_variable_reference_count():
    preds = ["the cat sat on the mat today", "a dog ran in the big park"]
    refs = [["the cat sat on a mat today", "the cat is on the mat today"], "a dog ran in the park"]
    want = sacrebleu.corpus_bleu(preds, [["the cat sat on a mat today", "a dog ran in the park"],
                                         ["the cat is on the mat today", None]]).score
    assert bleu4(preds, refs)["bleu4"] == pytest.approx(want)


def test_bleu4_chinese_uses_zh_tokenizer():
    preds, refs = ["我爱北京天安门"], ["我爱北京天安门广场"]
    got = bleu4(preds, refs)["bleu4"]
    assert got == pytest.approx(sacrebleu.corpus_bleu(preds, [refs], tokenize="zh").score)
    # with the English tokenizer the whole sentence is one token and nothing matches
    assert sacrebleu.corpus_bleu(preds, [refs], tokenize="13a").score == 0.0
    assert got > 50
    assert bleu4(preds, refs, lang="en")["bleu4"] == 0.0


def test_detect_lang():
    assert detect_lang(["今天天气很好", "hello"]) == "zh"
    assert detect_lang(["The weather is nice (很好)."]) == "en"
    assert detect_lang([""]) == "en"


def test_rouge_english_matches_rouge_score():
    preds = ["the quick brown fox jumps over the lazy dog", "hello there world"]
    refs = ["a quick brown dog jumps over the fox", "hello world"]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
    for key in ("rouge1", "rouge2", "rougeL"):
        want = sum(scorer.score(r, p)[key].fmeasure for p, r in zip(preds, refs)) / 2 * 100
        assert rouge(preds, refs)[key] == pytest.approx(want)


def test_rouge_chinese_by_hand():
    # jieba: 我/爱/北京/天安门 vs 我/爱/北京 (the full stop is dropped as punctuation)
    got = rouge(["我爱北京天安门。"], ["我爱北京"])
    f1 = 2 * (3 / 4) * (3 / 3) / (3 / 4 + 3 / 3)  # unigrams: 3 shared, 4 predicted, 3 reference
    f2 = 2 * (2 / 3) * (2 / 2) / (2 / 3 + 2 / 2)  # bigrams: 我爱, 爱北京 shared; 3 predicted, 2 reference
    assert got["rouge1"] == pytest.approx(100 * f1)
    assert got["rouge2"] == pytest.approx(100 * f2)
    assert got["rougeL"] == pytest.approx(100 * f1)  # LCS = 3 tokens
    # rouge-score's default tokenizer sees no tokens in Chinese at all
    assert rouge_scorer.RougeScorer(["rouge1"]).score("我爱北京", "我爱北京天安门")["rouge1"].fmeasure == 0.0


def test_exact_match_and_contains_normalize():
    preds = ["  Paris\n", "The answer is ＰＡＲＩＳ.", "London"]
    refs = ["paris", "Paris", "Berlin"]
    assert exact_match(preds, refs) == {"exact_match": pytest.approx(100 / 3)}
    assert contains(preds, refs) == {"contains": pytest.approx(200 / 3)}


def test_registry_and_errors():
    assert set(GENERATION_METRICS) == {"bleu4", "rouge", "exact_match", "contains", "box_iou"}
    out = generation_metrics(["exact_match", "rouge"], ["a b"], ["a b"])
    assert out["exact_match"] == 100.0 and out["rougeL"] == pytest.approx(100.0)
    with pytest.raises(ValueError, match="unknown metric.*'blue'.*choose from bleu4"):
        generation_metrics(["blue"], ["a"], ["a"])
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        exact_match(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="empty"):
        rouge([], [])


def test_classification_matches_sklearn_multiclass():
    labels = ["neg", "neu", "pos"]
    y_true = ["neg", "neu", "pos", "pos", "neg", "neu", "pos", "neg"]
    y_pred = ["neg", "pos", "pos", "neu", "neg", "neu", "pos", "pos"]
    probs = [[.7, .2, .1], [.2, .3, .5], [.1, .2, .7], [.2, .5, .3],
             [.6, .3, .1], [.3, .4, .3], [.1, .1, .8], [.3, .2, .5]]
    got = classification_metrics(y_true, y_pred, labels, probs)
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert got["f1_macro"] == pytest.approx(skm.f1_score(y_true, y_pred, average="macro"))
    assert got["precision_macro"] == pytest.approx(skm.precision_score(y_true, y_pred, average="macro"))
    assert got["recall_macro"] == pytest.approx(skm.recall_score(y_true, y_pred, average="macro"))
    assert got["f1_per_class"]["pos"] == pytest.approx(skm.f1_score(y_true, y_pred, labels=["pos"], average=None)[0])
    assert got["auc"] == pytest.approx(skm.roc_auc_score(y_true, probs, multi_class="ovr", labels=labels))
    # rows are true labels in `labels` order: neg was predicted pos once
    assert got["confusion_matrix"] == [[2, 0, 1], [0, 1, 1], [0, 1, 2]]


def test_classification_auc_with_labels_in_any_order():
    # probability columns follow `labels`, which need not be sorted (e.g. classify.labels as the user wrote them)
    labels = ["pos", "neg", "neu"]
    y_true = ["neg", "neu", "pos", "pos", "neg", "neu", "pos", "neg"]
    probs = [[.1, .7, .2], [.5, .2, .3], [.7, .1, .2], [.3, .2, .5],
             [.1, .6, .3], [.3, .3, .4], [.8, .1, .1], [.5, .3, .2]]
    got = classification_metrics(y_true, y_true, labels, probs)
    sorted_probs = [[row[labels.index(c)] for c in sorted(labels)] for row in probs]
    assert got["auc"] == pytest.approx(skm.roc_auc_score(y_true, sorted_probs, multi_class="ovr"))


def test_classification_binary_auc_and_undefined_auc():
    y_true, y_pred = [0, 1, 1, 0, 1], [0, 1, 0, 0, 1]
    probs = [[.9, .1], [.2, .8], [.6, .4], [.7, .3], [.4, .6]]
    got = classification_metrics(y_true, y_pred, [0, 1], probs)
    assert got["auc"] == pytest.approx(skm.roc_auc_score(y_true, [p[1] for p in probs]))
    assert got["auc"] == 1.0  # every positive outranks every negative here
    one_class = classification_metrics([1, 1], [1, 0], [0, 1], [[.2, .8], [.6, .4]])
    assert one_class["auc"] is None and "one class" in one_class["auc_error"]


def test_classification_errors():
    with pytest.raises(ValueError, match=r"y_pred has label\(s\) 'maybe'"):
        classification_metrics(["yes"], ["maybe"], ["yes", "no"])
    with pytest.raises(ValueError, match="probs row 0 has 3 values; expected one per label \\(2\\)"):
        classification_metrics(["yes"], ["yes"], ["yes", "no"], [[.1, .2, .7]])


def test_perplexity():
    assert perplexity(2 * math.log(3.0), 2) == pytest.approx(3.0)
    assert perplexity(1e6, 1) == math.inf
    with pytest.raises(ValueError, match="n_tokens=0"):
        perplexity(1.0, 0)
