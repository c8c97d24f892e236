"""stage token_classify: CoNLL / span data, entity metrics checked against seqeval, a tagger that trains and reloads."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.data.io import DataError
from tunelab.data.tagging import load_tagging, read_conll
from tunelab.eval.entities import entities, entity_metrics
from tunelab.run import Run
from tunelab.runfolder import RunFolder
from tunelab.training.tagging import TagModel, load_tagger, make_tag_samples, predict_tags

REPO = Path(__file__).resolve().parents[2]
NER = REPO / "examples" / "data" / "ner_demo.conll"


def test_entity_metrics_agree_with_seqeval_on_random_and_ill_formed_tags() -> None:
    seqeval = pytest.importorskip("seqeval.metrics")
    from seqeval.metrics.sequence_labeling import get_entities

    rng = random.Random(0)
    tags = ["O", "B-PER", "I-PER", "E-PER", "S-PER", "B-LOC", "I-LOC", "E-LOC", "S-LOC", "I-ORG", "B-ORG"]
    for _ in range(200):
        true = [[rng.choice(tags) for _ in range(rng.randint(1, 12))] for _ in range(rng.randint(1, 6))]
        pred = [[rng.choice(tags) if rng.random() < 0.5 else t for t in s] for s in true]
        for s in true:
            assert sorted(entities(s)) == sorted(get_entities(s))
        ours = entity_metrics(true, pred)
        assert ours["precision"] == pytest.approx(seqeval.precision_score(true, pred), abs=1e-12)
        assert ours["recall"] == pytest.approx(seqeval.recall_score(true, pred), abs=1e-12)
        assert ours["f1"] == pytest.approx(seqeval.f1_score(true, pred), abs=1e-12)
        report = seqeval.classification_report(true, pred, output_dict=True, zero_division=0)
        for kind, row in ours["per_type"].items():
            assert row["f1"] == pytest.approx(report[kind]["f1-score"], abs=1e-12)
            assert row["support"] == report[kind]["support"]
        assert ours["f1_macro"] == pytest.approx(report["macro avg"]["f1-score"], abs=1e-12)


def test_hand_counted_example() -> None:
    """2 true entities (PER 0-1, LOC 3); predicted PER 0-1 (right) and LOC 3-4 (wrong end): P = R = F1 = 1/2."""
    m = entity_metrics([["B-PER", "I-PER", "O", "B-LOC", "O"]], [["B-PER", "I-PER", "O", "B-LOC", "I-LOC"]])
    assert (m["precision"], m["recall"], m["f1"]) == (0.5, 0.5, 0.5)
    assert m["per_type"]["LOC"]["f1"] == 0.0 and m["word_accuracy"] == 0.8


def test_conll_and_span_records_become_word_tags(tmp_path: Path) -> None:
    conll = tmp_path / "a.conll"
    conll.write_text("-DOCSTART- -X- O\n\nJohn NNP B-PER\nlives VBZ O\n\nParis NNP S-LOC\n", encoding="utf-8")
    first, second = read_conll(conll)
    assert (first.words, first.tags, first.where) == (["John", "lives"], ["B-PER", "O"], f"{conll}:3")
    assert second.tags == ["S-LOC"]
    spans = tmp_path / "s.jsonl"
    zh_spans = [{"start": 0, "end": 2, "label": "PER"}, [3, 7, "ORG"]]
    spans.write_text(json.dumps({"text": "张三在北京大学读书。", "spans": zh_spans}, ensure_ascii=False) + "\n"
                     + json.dumps({"text": "Ann met New York Times staff", "entities": [[0, 3, "PER"],
                                                                                     [8, 22, "ORG"]]}) + "\n",
                     encoding="utf-8")
    zh, en = load_tagging(spans, "BIOES")
    assert zh.words[:3] == ["张", "三", "在"] and zh.tags == ["B-PER", "E-PER", "O", "B-ORG", "I-ORG", "I-ORG",
                                                           "E-ORG", "O", "O", "O"]
    assert en.tags == ["S-PER", "O", "B-ORG", "I-ORG", "E-ORG", "O"]
    assert load_tagging(spans, "BIO")[1].tags == ["B-PER", "O", "B-ORG", "I-ORG", "I-ORG", "O"]


@pytest.mark.parametrize(("text", "message"), [
    ("John B-PER\nlives\n", "a.conll:2: expected 'word tag'"),
    ("John PER\n", "a.conll:1: tag 'PER' is not O or B-/I-/E-/S- followed by a type"),
])
def test_bad_conll_lines_are_named(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "a.conll"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        load_tagging(path)


def test_bad_spans_are_named(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps({"text": "Johnny lives", "spans": [[0, 4, "PER"]]}) + "\n")
    with pytest.raises(DataError, match=r"s.jsonl:1: span \[0, 4\) 'John' PER does not start and end on word"):
        load_tagging(path)
    path.write_text(json.dumps({"tokens": ["a", "b"], "tags": ["O"]}) + "\n")
    with pytest.raises(DataError, match="s.jsonl:1: 2 tokens but 1 tags"):
        load_tagging(path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A full fine-tune of tiny-llama on the demo NER file, through the CLI (24 steps)."""
    root = tmp_path_factory.mktemp("ner")
    cfg = root / "ner.yaml"
    cfg.write_text(f"""model: {{name: tiny-llama}}
data: {{train: {NER}, val_size: 0.25, max_length: 64}}
method: {{name: full}}
stage: token_classify
train: {{epochs: 3, batch_size: 8, lr: 3.0e-3, eval_every: 12, report: false, warmup_ratio: 0.0}}
output_dir: {root / 'run'}
""", encoding="utf-8")
    result = CliRunner().invoke(app, ["train", str(cfg), "--quiet"])
    assert result.exit_code == 0, result.output
    return root / "run"


def test_tagger_learns_and_its_reported_f1_is_seqevals(trained: Path) -> None:
    seqeval = pytest.importorskip("seqeval.metrics")
    summary = Run(trained).summary
    (result,) = RunFolder(trained).eval_results()
    rows = [json.loads(x) for x in RunFolder.predictions_path(result).read_text(encoding="utf-8").splitlines()]
    true, pred = [r["reference"] for r in rows], [r["prediction"] for r in rows]
    assert summary["f1"] == pytest.approx(seqeval.f1_score(true, pred), abs=1e-12)
    assert summary["precision"] == pytest.approx(seqeval.precision_score(true, pred), abs=1e-12)
    assert summary["f1"] > 0.85  # lexical tags on a 2-layer model: 24 steps are enough
    info = json.loads((trained / "run.json").read_text())
    assert info["stage"] == "token_classify"
    head = json.loads((trained / "model" / "head.json").read_text())
    assert head["kind"] == "token" and head["scheme"] == "BIO" and head["labels"][0] == "O"

    # the untrained head on the same base model: near zero, so the F1 above is learned
    from tunelab.models import load_model, load_tokenizer

    tok = load_tokenizer("tiny-llama")
    examples = load_tagging(NER)
    fresh = TagModel(load_model("tiny-llama"), head["labels"], seed=42)
    val_words = {tuple(r["words"]) for r in rows}
    val = [ex for ex in examples if tuple(ex.words) in val_words]
    before = predict_tags(fresh, make_tag_samples(val, head["labels"], tok, 64), tok.pad_token_id, 8, "cpu")
    assert entity_metrics([ex.tags for ex in val], before)["f1"] < summary["f1"] - 0.5

    # the reloaded tagger gives exactly the saved predictions
    model = load_tagger(Run(trained))
    again = predict_tags(model, make_tag_samples(val, head["labels"], tok, 64), tok.pad_token_id, 8, "cpu")
    by_words = {tuple(r["words"]): r["prediction"] for r in rows}
    assert again == [by_words[tuple(ex.words)] for ex in val]
    changed = not torch.equal(model.head.weight, fresh.head.weight)
    assert changed


def test_generate_tags_text_records_with_character_offsets(trained: Path, tmp_path: Path) -> None:
    data = tmp_path / "texts.jsonl"
    text = "Bob visited Buenos Aires last week."  # a training sentence, written as plain text
    data.write_text(json.dumps({"text": text, "spans": [[0, 3, "PER"], [12, 24, "LOC"]]}) + "\n"
                    + json.dumps({"tokens": ["Alice", "visited", "Oslo", "."]}) + "\n", encoding="utf-8")
    out = tmp_path / "tags.jsonl"
    result = CliRunner().invoke(app, ["generate", str(trained), "--data", str(data), "--out", str(out)])
    assert result.exit_code == 0, result.output
    first, second = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert first["entities"] == [{"start": 0, "end": 3, "label": "PER", "text": "Bob"},
                                 {"start": 12, "end": 24, "label": "LOC", "text": "Buenos Aires"}]
    assert first["reference"] == ["B-PER", "O", "B-LOC", "I-LOC", "O", "O", "O"]
    assert len(second["tags"]) == 4 and "reference" not in second
    assert "entity F1 1.000" in result.output
