"""`tunelab eval --compare / --human-sheet / --mc / --metrics classification` on tiny runs trained here."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

import tunelab
from tunelab.data.io import DataError
from tunelab.data.pipeline import load_conversations
from tunelab.data.templates import IGNORE_INDEX, prompt_ids, tokenize_conversation
from tunelab.eval.evaluate import evaluate_run
from tunelab.eval.human import import_ratings
from tunelab.eval.mc import format_question, load_questions
from tunelab.eval.report import write_report
from tunelab.infer.generate import generate
from tunelab.models import load_model
from tunelab.run import Run

pytest.importorskip("sklearn")
MAX_LENGTH = 128


def _train(root: Path, name: str, data: Path, lr: float, seed: int) -> Run:
    cfg = {"model": {"name": "tiny-llama"},
           "data": {"train": str(data), "max_samples": 8, "max_length": MAX_LENGTH, "val_size": 0.0},
           "method": {"name": "lora", "r": 4, "alpha": 8},
           "train": {"max_steps": 3, "batch_size": 4, "lr": lr, "seed": seed, "report": False},
           "output_dir": str(root / name)}
    return tunelab.train(cfg, progress=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shared_data):
    """Two LoRA runs of tiny-llama on Fudan news, and an 8-record eval file with two examples per label."""
    root = tmp_path_factory.mktemp("cmp")
    eval_file = root / "news_eval.jsonl"
    picked, per_label = [], {}
    for line in (shared_data / "fudan_news_val.jsonl").read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        if per_label.get(rec["label"], 0) < 2:
            per_label[rec["label"]] = per_label.get(rec["label"], 0) + 1
            picked.append(line)
    eval_file.write_text("\n".join(picked) + "\n", encoding="utf-8")
    train_file = shared_data / "fudan_news_train.jsonl"
    return root, _train(root, "a", train_file, 2e-2, 0), _train(root, "b", train_file, 5e-3, 1), eval_file


@torch.no_grad()
def _direct_loss(model, tok, template, data: Path, limit: int) -> float:
    """Mean NLL over assistant tokens, one unpadded forward per record."""
    convs, _ = load_conversations(str(data))
    total, n = 0.0, 0
    for conv in convs[:limit]:
        s = tokenize_conversation(tok, template, conv, MAX_LENGTH)
        logits = model(input_ids=torch.tensor([s.input_ids])).logits[0]  # (T, V)
        labels = torch.tensor(s.labels[1:])  # (T-1,)
        total += float(F.cross_entropy(logits[:-1].float(), labels, ignore_index=IGNORE_INDEX, reduction="sum"))
        n += int((labels != IGNORE_INDEX).sum())
    return total / n


@torch.no_grad()
def _direct_loglik(model, tok, template, messages, continuation: str) -> float:
    p = prompt_ids(tok, template, messages)[-MAX_LENGTH:]
    c = tok(continuation, add_special_tokens=False)["input_ids"]
    logp = torch.log_softmax(model(input_ids=torch.tensor([p + c])).logits[0].float(), -1)  # (T, V)
    return sum(float(logp[len(p) - 1 + i, t]) for i, t in enumerate(c))


def test_compare_with_base_gives_consistent_loss_deltas(runs):
    _, run, _, data = runs
    res = evaluate_run(run, str(data), metrics=["exact_match"], limit=4, max_new_tokens=4, compare="base")
    model, tok, template = run.load_model()
    base = load_model("tiny-llama")
    tuned_loss, base_loss = _direct_loss(model, tok, template, data, 4), _direct_loss(base, tok, template, data, 4)
    assert res["loss"] == pytest.approx(tuned_loss, rel=1e-4)
    assert res["compare"]["name"] == "base:tiny-llama"
    assert res["compare"]["metrics"]["loss"] == pytest.approx(base_loss, rel=1e-4)
    assert abs(tuned_loss - base_loss) > 1e-3  # training moved the loss, so the delta means something
    saved = json.loads(Path(res["saved"]).read_text(encoding="utf-8"))
    assert saved["compare"]["deltas"]["loss"] == pytest.approx(tuned_loss - base_loss, rel=1e-3, abs=1e-6)
    assert saved["compare"]["deltas"]["perplexity"] == pytest.approx(
        math.exp(tuned_loss) - math.exp(base_loss), rel=1e-3, abs=1e-3)
    assert "-vs-base_tiny-llama-" in Path(res["saved"]).name and saved["n"] == 4
    rows = [json.loads(line) for line in
            Path(res["saved"]).with_suffix(".predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    convs, _ = load_conversations(str(data))
    prompts = [c.messages[:-1] for c in convs[:4]]
    assert [r["prediction"] for r in rows] == generate(model, tok, template, prompts, max_new_tokens=4)
    assert [r["compare_prediction"] for r in rows] == generate(base, tok, template, prompts, max_new_tokens=4)
    # the report shows the two systems' answers side by side
    html = write_report(run.path).read_text(encoding="utf-8")
    assert "before-after" in html and "This run vs base:tiny-llama" in html
    assert "after: this run" in html


def _as_shown(text: str) -> str:
    """How the sheet shows an answer: a leading formula character is defused with a quote."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def test_compare_with_another_run_and_blinded_sheet(runs, tmp_path):
    _, run_a, run_b, data = runs
    sheet = tmp_path / "ab.csv"
    res = evaluate_run(run_a, str(data), limit=3, max_new_tokens=3, compare=str(run_b.path), human_sheet=sheet)
    assert res["compare"]["name"] == "b"
    model_b, tok, template = run_b.load_model()
    assert res["compare"]["metrics"]["loss"] == pytest.approx(_direct_loss(model_b, tok, template, data, 3), rel=1e-4)
    rows = [json.loads(line) for line in
            Path(res["saved"]).with_suffix(".predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    key = json.loads((tmp_path / "ab.key.json").read_text(encoding="utf-8"))["rows"]
    with open(sheet, encoding="utf-8-sig", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 3
    for row, pred in zip(table, rows):
        shown = {key[row["id"]]["answer_1"]: row["answer_1"], key[row["id"]]["answer_2"]: row["answer_2"]}
        assert shown == {"a": _as_shown(pred["prediction"]), "b": _as_shown(pred["compare_prediction"])}
        row["better"] = "1" if key[row["id"]]["answer_1"] == "a" else "2"  # the rater prefers run a
    with open(sheet, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    assert import_ratings(sheet)["systems"]["a"]["win_rate"] == 1.0
    with pytest.raises(ValueError, match="that is the run being evaluated"):
        evaluate_run(run_a, str(data), limit=1, compare=str(run_a.path))
    with pytest.raises(ValueError, match="also pass compare"):
        evaluate_run(run_a, str(data), limit=1, human_sheet=tmp_path / "x.csv")


def test_classification_metrics_from_generations_and_label_likelihoods(runs):
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    _, run, _, data = runs
    res = evaluate_run(run, str(data), metrics=["classification"], max_new_tokens=6)
    rows = [json.loads(line) for line in
            Path(res["saved"]).with_suffix(".predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    labels = sorted({"体育", "政治", "计算机", "财经"})
    assert res["labels"] == labels and res["n"] == 8
    y_true = [r["label"] for r in rows]
    assert y_true == [json.loads(line)["label"] for line in data.read_text(encoding="utf-8").splitlines()]
    y_pred = [r["predicted_label"] for r in rows]
    assert res["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert res["f1_macro"] == pytest.approx(f1_score(y_true, y_pred, labels=labels, average="macro",
                                                     zero_division=0))
    probs = [[r["label_probs"][lab] for lab in labels] for r in rows]
    assert res["auc"] == pytest.approx(roc_auc_score(y_true, probs, multi_class="ovr", labels=labels))
    # the probabilities are the softmax of each label answer's log-likelihood given the prompt
    model, tok, template = run.load_model()
    convs, _ = load_conversations(str(data))
    ll = [_direct_loglik(model, tok, template, convs[0].messages[:-1], f"\\boxed{{{lab}}}") for lab in labels]
    expected = torch.softmax(torch.tensor(ll, dtype=torch.float64), 0).tolist()
    assert [rows[0]["label_probs"][lab] for lab in labels] == pytest.approx(expected, rel=1e-4)


def _write_mc(path: Path) -> None:
    items = [
        {"question": "What is 2 + 2?", "A": "3", "B": "4", "C": "5", "D": "22", "answer": "B"},
        {"question": "下列哪个是水果？", "A": "苹果", "B": "汽车", "C": "桌子", "D": "电脑", "answer": "A"},
        {"question": "Which planet is largest?", "choices": ["Mars", "Venus", "Jupiter"], "answer": 2,
         "subject": "astronomy"},
    ]
    path.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in items), encoding="utf-8")


@pytest.mark.parametrize("scoring", ["letter", "text"])
def test_multiple_choice_matches_direct_loglikelihood(runs, tmp_path, scoring):
    _, run, _, _ = runs
    mc = tmp_path / "quiz.jsonl"
    _write_mc(mc)
    res = evaluate_run(run, mc=str(mc), mc_scoring=scoring, compare="base")
    rows = [json.loads(line) for line in
            Path(res["saved"]).with_suffix(".predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    model, tok, template = run.load_model()
    questions = load_questions(mc)
    assert [q.answer for q in questions] == [1, 0, 2]
    hits = 0
    for q, row in zip(questions, rows):
        msgs = [{"role": "user", "content": format_question(q)}]
        conts = "ABCD"[:len(q.choices)] if scoring == "letter" else q.choices
        ll = [_direct_loglik(model, tok, template, msgs, c) for c in conts]
        assert row["loglik"] == pytest.approx(ll, rel=1e-4, abs=1e-4)
        hits += max(range(len(ll)), key=ll.__getitem__) == q.answer
        assert row["reference"] == "ABC"[q.answer]
    assert res["accuracy"] == pytest.approx(hits / 3)
    assert ("accuracy_norm" in res) == (scoring == "text")
    assert res["compare"]["deltas"]["accuracy"] == pytest.approx(res["accuracy"] - res["compare"]["metrics"]["accuracy"])
    assert "quiz-mc-vs-base_tiny-llama-" in Path(res["saved"]).name


def test_multiple_choice_file_errors_name_the_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "A": "x", "B": "y", "answer": "E"}) + "\n"
                   + json.dumps({"question": "q", "choices": ["x"], "answer": 0}) + "\n"
                   + json.dumps({"A": "x", "B": "y", "answer": "A"}) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as e:
        load_questions(bad)
    msg = str(e.value)
    assert msg.startswith(f"3 problem(s) in {bad}:")
    assert f"{bad}:1: 'answer' 'E' points past the 2 options; use a letter A-B or an index 0-1" in msg
    assert f"{bad}:2: needs at least two options" in msg
    assert f"{bad}:3: missing 'question' text" in msg


def test_cli_compare_table_and_errors(runs, tmp_path):
    from tunelab.cli import app

    _, run, _, data = runs
    cli = CliRunner()
    res = cli.invoke(app, ["eval", str(run.path), "--data", str(data), "--limit", "2", "--max-new-tokens", "2",
                           "--compare", "base", "--human-sheet", str(tmp_path / "s.csv")])
    assert res.exit_code == 0, res.output
    assert "base:tiny-llama" in res.output and "delta" in res.output
    names = [line.replace("│", " ").split()[0] for line in res.output.splitlines() if line.startswith("│")]
    # task metrics lead; with --compare the inference speed of both (batch 1, same process) follows
    assert names == ["exact_match", "contains", "loss", "perplexity", "latency_p50_s", "latency_p95_s",
                     "tokens_per_s", "ms_per_token", "n"]
    loss_line = next(line for line in res.output.splitlines() if line.strip("│ ").startswith("loss"))
    ours, theirs, delta = (float(x) for x in loss_line.replace("│", " ").split()[1:4])
    assert delta == pytest.approx(ours - theirs, abs=2e-4)
    assert (tmp_path / "s.csv").is_file() and "tunelab import-ratings" in res.output
    res = cli.invoke(app, ["eval", str(run.path)])
    assert res.exit_code != 0 and "pass --data FILE" in res.output
    res = cli.invoke(app, ["eval", str(run.path), "--data", str(data), "--human-sheet", str(tmp_path / "t.csv")])
    assert res.exit_code != 0 and "add --compare base" in res.output
    res = cli.invoke(app, ["eval", str(run.path), "--data", str(data), "--metrics", "acc"])
    assert res.exit_code != 0 and "unknown metric(s) 'acc'" in res.output
