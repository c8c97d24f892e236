"""The pretrain and classify stages end to end on tiny-llama."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import tunelab
from tunelab.data.io import DataError
from tunelab.data.pipeline import collate
from tunelab.data.stage_formats import load_text
from tunelab.eval.metrics import classification_metrics
from tunelab.models import load_model, load_tokenizer
from tunelab.run import Run
from tunelab.training.classes import EvalLogits, label_answers, predict
from tunelab.training.heads import load_scorer
from tunelab.stages.pretrain import chunk_documents

DOCS = ["The river runs past the old mill and into the valley.",
        "Bread rises when the yeast is warm; bakers know the smell of a good dough.",
        "Stars are far away, and their light is old when it reaches us."]


def base_cfg(stage: str, data: Path, out: Path, **train) -> dict:
    return {"model": {"name": "tiny-llama"}, "stage": stage, "output_dir": str(out),
            "data": {"train": str(data), "max_length": 16, "val_size": 0.0},
            "method": {"name": "lora", "r": 4, "alpha": 8},
            "train": {"max_steps": 2, "batch_size": 4, "lr": 1e-3, "warmup_ratio": 0.0, "report": False, **train}}


def test_pretrain_chunks_every_token_and_step_one_is_hf_cross_entropy(tmp_path: Path) -> None:
    data = tmp_path / "docs.txt"
    data.write_text("\n".join(DOCS[:2]) + "\n\n" + DOCS[2] + "\n", encoding="utf-8")  # a blank line is skipped
    tok = load_tokenizer("tiny-llama")
    docs = load_text(data)
    assert [d.where for d in docs] == [f"{data}:1", f"{data}:2", f"{data}:4"]
    blocks = chunk_documents(docs, tok, 16)
    stream = [t for d in DOCS for t in tok(d, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]]
    assert [t for b in blocks for t in b.input_ids] == stream  # nothing dropped, EOS between documents
    assert all(len(b.input_ids) == 16 for b in blocks[:-1]) and all(b.labels == b.input_ids for b in blocks)
    n = len(blocks)
    run = tunelab.train(base_cfg("pretrain", data, tmp_path / "pt", batch_size=n), progress=False)
    batch = collate(blocks, tok.pad_token_id)
    with torch.no_grad():  # LoRA B = 0 at step 1: the base model's own (HF) token-mean cross-entropy
        hf = load_model("tiny-llama")(**batch).loss
    lines = [m for m in run.metrics() if "loss" in m]
    assert lines[0]["loss"] == pytest.approx(float(hf), rel=1e-5)
    assert lines[1]["loss"] < lines[0]["loss"]  # the same blocks again after one update
    assert run.summary["data"]["train_tokens"] == len(stream) and run.info["stage"] == "pretrain"
    adapter = load_file(str(run.path / "adapter" / "adapter_model.safetensors"))
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in adapter.items())


def test_pretrain_reads_jsonl_text_and_names_a_bad_record(shared_data: Path, tmp_path: Path) -> None:
    docs = load_text(shared_data / "llamafactory_demo" / "c4_demo.jsonl")
    assert len(docs) == 300 and docs[0].text.startswith("Don")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"content": "wrong key"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.jsonl:2: field 'text' is missing"):
        load_text(bad)


def write_classes(path: Path, rows: list[tuple[str, str]]) -> None:
    path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows), encoding="utf-8")


def test_classify_head_learns_saves_and_reports_sklearn_metrics(tmp_path: Path) -> None:
    pos = ["great lovely day", "happy bright sun", "sweet warm smile", "kind good friend", "joy and fun"]
    neg = ["awful cold night", "sad grey rain", "bitter angry word", "cruel bad storm"]
    train = [(t, "pos") for t in pos] + [(t, "neg") for t in neg]
    val = [("lovely happy sun", "pos"), ("sad cold storm", "neg"), ("good warm day", "pos")]
    write_classes(tmp_path / "train.jsonl", train)
    write_classes(tmp_path / "val.jsonl", val)
    cfg = base_cfg("classify", tmp_path / "train.jsonl", tmp_path / "cls", max_steps=12, batch_size=9, lr=1e-2)
    cfg["data"]["eval"] = str(tmp_path / "val.jsonl")
    cfg["classify"] = {"class_weights": "balanced"}
    run = tunelab.train(cfg, progress=False)
    lines = [m for m in run.metrics() if "loss" in m]
    assert lines[-1]["loss"] < lines[0]["loss"] and lines[-1]["accuracy"] == 1.0
    # the saved eval file holds sklearn's metrics of the saved predictions
    (report,) = sorted((run.path / "eval").glob("validation-*.json"))
    saved = json.loads(report.read_text(encoding="utf-8"))
    preds = [json.loads(line) for line in report.with_suffix(".predictions.jsonl").read_text().splitlines()]
    assert saved["n"] == 3 and [p["reference"] for p in preds] == ["pos", "neg", "pos"]
    again = classification_metrics([p["reference"] for p in preds], [p["prediction"] for p in preds], ["neg", "pos"],
                                   [[p["probs"]["neg"], p["probs"]["pos"]] for p in preds])
    assert saved["metrics"]["f1_macro"] == pytest.approx(again["f1_macro"])
    assert run.summary["accuracy"] == saved["metrics"]["accuracy"] and run.summary["auc"] is not None
    # balanced weights: n / (K n_c) = 9 / (2 * 4) for neg, 9 / (2 * 5) for pos
    assert saved["settings"]["class_weights"] == pytest.approx([9 / 8, 9 / 10])
    # the head reloads with its labels and predicts what the report says
    scorer = load_scorer(Run(run.path))
    assert scorer.labels == ["neg", "pos"] and scorer.head.weight.shape == (2, 64)
    tok = load_tokenizer("tiny-llama")
    enc = tok(["lovely happy sun"], return_tensors="pt")
    with torch.no_grad():
        probs = scorer(enc["input_ids"], enc["attention_mask"]).softmax(-1)[0]
    assert probs.tolist() == pytest.approx([preds[0]["probs"]["neg"], preds[0]["probs"]["pos"]], abs=1e-5)


def test_classify_reports_the_loops_final_evaluation_without_scoring_validation_again(tmp_path: Path,
                                                                                       monkeypatch) -> None:
    import tunelab.stages.classify as classify_stage

    calls = []
    monkeypatch.setattr(classify_stage, "predict", lambda *a, **k: calls.append(a) or predict(*a, **k))
    train = [("great lovely day", "pos"), ("happy bright sun", "pos"), ("sad grey rain", "neg"),
             ("awful cold night", "neg")]
    val = [("lovely happy sun", "pos"), ("sad cold storm", "neg"), ("good warm day", "pos"),
           ("bitter angry word", "neg"), ("joy and fun", "pos")]
    write_classes(tmp_path / "train.jsonl", train)
    write_classes(tmp_path / "val.jsonl", val)
    cfg = base_cfg("classify", tmp_path / "train.jsonl", tmp_path / "cls", max_steps=4, batch_size=4, lr=1e-2,
                   eval_every=2)
    cfg["data"]["eval"] = str(tmp_path / "val.jsonl")
    run = tunelab.train(cfg, progress=False)
    assert calls == []  # two evaluations (steps 2 and 4); the report reuses the last, made with the final weights
    (report,) = sorted((run.path / "eval").glob("validation-*.json"))
    preds = [json.loads(line) for line in report.with_suffix(".predictions.jsonl").read_text().splitlines()]
    scorer = load_scorer(Run(run.path))  # an independent reload scores each text as the report says
    tok = load_tokenizer("tiny-llama")
    for (text, label), row in zip(val, preds):
        enc = tok([text], return_tensors="pt")
        with torch.no_grad():
            probs = scorer(enc["input_ids"], enc["attention_mask"]).softmax(-1)[0]
        assert row["reference"] == label
        assert probs.tolist() == pytest.approx([row["probs"]["neg"], row["probs"]["pos"]], abs=1e-5)


def test_eval_logits_keep_only_the_latest_whole_pass() -> None:
    kept = EvalLogits(3)
    assert kept.probs() is None
    kept.add(torch.zeros(2, 2))
    assert kept.probs() is None  # a pass is not complete until 3 rows
    kept.add(torch.zeros(1, 2))
    kept.add(torch.tensor([[0.0, 1.0], [2.0, 0.0]]))  # the next pass begins: the first is dropped
    kept.add(torch.tensor([[1.0, 1.0]]))
    assert kept.probs() == pytest.approx(torch.tensor([[0.0, 1.0], [2.0, 0.0], [1.0, 1.0]]).softmax(-1))


def test_classify_label_tokens_on_fudan_news_scores_the_answer_pattern(shared_data: Path, tmp_path: Path) -> None:
    rows = [json.loads(line) for line in (shared_data / "fudan_news_train.jsonl").read_text().splitlines()]
    picked = [next(r for r in rows if r["label"] == lab) for lab in ("政治", "财经", "体育", "计算机")]
    data = tmp_path / "news.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in picked), encoding="utf-8")
    from tunelab.data.stage_formats import load_classification

    ex = load_classification(data)[2]
    assert label_answers(ex, ["政治", "体育"]) == ["\\boxed{政治}", "\\boxed{体育}"]
    cfg = base_cfg("classify", data, tmp_path / "lt", batch_size=4)
    cfg["data"]["max_length"] = 64
    cfg["classify"] = {"mode": "label_tokens"}
    run = tunelab.train(cfg, progress=False)
    lines = [m for m in run.metrics() if "loss" in m]
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in lines) and lines[1]["loss"] < lines[0]["loss"]
    assert not (run.path / "adapter" / "head.safetensors").exists()  # no new weights in this mode
    assert run.summary["data"]["labels"] == ["体育", "政治", "计算机", "财经"]


def test_classify_rejects_weights_that_do_not_match_the_labels(tmp_path: Path) -> None:
    write_classes(tmp_path / "t.jsonl", [("a b", "x"), ("c d", "y"), ("e f", "z")])
    cfg = base_cfg("classify", tmp_path / "t.jsonl", tmp_path / "bad")
    cfg["classify"] = {"class_weights": [1.0, 2.0]}
    with pytest.raises(DataError, match=r"classify.class_weights: 2 numbers for 3 labels"):
        tunelab.train(cfg, progress=False)
