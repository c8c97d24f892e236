"""stage multihead: one shared model, a head per task (classify, regress, tag, lm), loss weights, per-task metrics."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.config import ConfigError, build_config
from tunelab.data.templates import IGNORE_INDEX, Tokenized
from tunelab.models import load_model
from tunelab.run import Run
from tunelab.runfolder import RunFolder
from tunelab.stages.multihead import check_heads
from tunelab.training.multihead import (
    MultiHeadModel,
    RegSample,
    TaskSample,
    collate_multi,
    load_multihead,
    multi_step,
    regression_metrics,
    task_predictions,
)

REPO = Path(__file__).resolve().parents[2]
NER = REPO / "examples" / "data" / "ner_demo.conll"


def test_every_task_needs_a_head_and_every_head_a_task() -> None:
    cfg = build_config({"stage": "multihead", "data": {"train": [{"path": "a.json", "task": "news"},
                                                                 {"path": "b.json", "task": "chat"}]},
                        "multihead": {"heads": [{"task": "news", "kind": "classify"}, {"task": "ner", "kind": "tag"}]}})
    with pytest.raises(ConfigError) as e:
        check_heads(cfg)
    assert "multihead.heads: no head for task 'chat' of data.train" in str(e.value)
    assert "multihead.heads[1].task: no data.train source has task 'ner'" in str(e.value)
    with pytest.raises(ConfigError, match="task 'a' has more than one head"):
        build_config({"data": {"train": "a.json"}, "multihead": {"heads": [{"task": "a", "kind": "lm"},
                                                                          {"task": "a", "kind": "tag"}]}})


def _seq(n: int, offset: int) -> Tokenized:
    ids = [(offset + 7 * i) % 500 + 10 for i in range(n)]
    return Tokenized(ids, [IGNORE_INDEX] * n)


def test_the_loss_is_each_tasks_weighted_mean_with_the_weights_only_in_training() -> None:
    torch.manual_seed(0)
    lm = load_model("tiny-llama")
    specs = {"score": {"kind": "regress", "pooling": "mean"}, "two": {"kind": "regress", "pooling": "last"}}
    model = MultiHeadModel(lm, specs, seed=3)
    samples = [TaskSample("score", RegSample(_seq(5, 1), 1.5)), TaskSample("two", RegSample(_seq(3, 2), -1.0)),
               TaskSample("score", RegSample(_seq(7, 3), 0.5))]
    batch = collate_multi(samples, specs, pad_id=0)
    model.train()
    loss, n = multi_step(model, batch, {"score": 2.0, "two": 0.5})
    assert n == 3 and batch["loss_count"] == 3

    # the same numbers straight from the decoder: mean-pool / last-token, a linear head, squared error
    body = lm.model
    with torch.no_grad():
        def out(task, seq, pooling):
            h = body(input_ids=torch.tensor([seq.input_ids]), use_cache=False).last_hidden_state[0]  # (T, H)
            v = h.mean(0) if pooling == "mean" else h[-1]
            return float(model.heads[task].weight[0] @ v)
        se = [(out("score", samples[0].sample.seq, "mean") - 1.5) ** 2,
              (out("two", samples[1].sample.seq, "last") + 1.0) ** 2,
              (out("score", samples[2].sample.seq, "mean") - 0.5) ** 2]
    score_mean, two_mean = (se[0] + se[2]) / 2, se[1]
    assert float(loss.detach()) == pytest.approx(2.0 * score_mean * 2 + 0.5 * two_mean * 1, rel=1e-4)
    model.eval()  # evaluation: plain means, no weights
    loss_eval, _ = multi_step(model, batch, {"score": 2.0, "two": 0.5})
    assert float(loss_eval) == pytest.approx(score_mean * 2 + two_mean, rel=1e-4)


def test_regression_metrics_against_numpy() -> None:
    np = pytest.importorskip("numpy")
    rng = random.Random(1)
    t = [rng.uniform(-2, 2) for _ in range(30)]
    p = [x + rng.gauss(0, 0.5) for x in t]
    m = regression_metrics(t, p)
    ta, pa = np.array(t), np.array(p)
    assert m["mse"] == pytest.approx(float(((ta - pa) ** 2).mean()))
    assert m["mae"] == pytest.approx(float(np.abs(ta - pa).mean()))
    assert m["pearson"] == pytest.approx(float(np.corrcoef(ta, pa)[0, 1]))
    assert m["r2"] == pytest.approx(1 - float(((ta - pa) ** 2).sum() / ((ta - ta.mean()) ** 2).sum()))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four tasks on tiny-llama through the CLI: sentiment (classify), length (regress), NER (tag), sums (lm)."""
    root = tmp_path_factory.mktemp("mh")
    rng = random.Random(0)
    pos, neg = ["sunny", "happy", "warm", "kind", "bright"], ["rain", "sad", "cold", "grey", "bitter"]
    senti = [{"text": " ".join(rng.choice(pos if y == "pos" else neg) for _ in range(4)), "label": y}
             for y in ["pos", "neg"] * 20]
    length = [{"text": " ".join(["go"] * k), "value": k / 4} for k in range(1, 9)] * 4
    sums = [{"instruction": f"What is {a} plus {b}?", "input": "", "output": str(a + b)} for a in range(4)
            for b in range(4)]
    for name, rows in (("senti", senti), ("length", length), ("sums", sums)):
        (root / f"{name}.json").write_text(json.dumps(rows), encoding="utf-8")
    cfg = root / "mh.yaml"
    cfg.write_text(f"""model: {{name: tiny-llama}}
data:
  train:
    - {{path: {root / 'senti.json'}, task: senti}}
    - {{path: {root / 'length.json'}, task: length}}
    - {{path: {NER}, task: ner}}
    - {{path: {root / 'sums.json'}, task: sums}}
  val_size: 0.25
  max_length: 48
method: {{name: full}}
stage: multihead
multihead:
  heads:
    - {{task: senti, kind: classify}}
    - {{task: length, kind: regress, loss_weight: 2.0}}
    - {{task: ner, kind: tag}}
    - {{task: sums, kind: lm, loss_weight: 0.5}}
train: {{epochs: 4, batch_size: 8, lr: 3.0e-3, eval_every: 10, report: false, warmup_ratio: 0.0}}
output_dir: {root / 'run'}
""", encoding="utf-8")
    result = CliRunner().invoke(app, ["train", str(cfg), "--quiet"])
    assert result.exit_code == 0, result.output
    return root / "run"


def test_each_task_reports_its_own_metrics_from_its_own_predictions(trained: Path) -> None:
    summary = Run(trained).summary
    assert set(summary["tasks"]) == {"senti", "length", "ner", "sums"}
    (result,) = RunFolder(trained).eval_results()
    rows = [json.loads(x) for x in RunFolder.predictions_path(result).read_text(encoding="utf-8").splitlines()]
    by = {t: [r for r in rows if r["task"] == t] for t in ("senti", "length", "ner")}
    acc = sum(r["reference"] == r["prediction"] for r in by["senti"]) / len(by["senti"])
    assert summary["senti/accuracy"] == pytest.approx(acc)
    mse = sum((r["reference"] - r["prediction"]) ** 2 for r in by["length"]) / len(by["length"])
    assert summary["length/mse"] == pytest.approx(mse)
    seqeval = pytest.importorskip("seqeval.metrics")
    assert summary["ner/f1"] == pytest.approx(seqeval.f1_score([r["reference"] for r in by["ner"]],
                                                               [r["prediction"] for r in by["ner"]]))
    evals = [r for r in Run(trained).metrics() if "eval_loss/sums" in r]
    assert summary["sums/loss"] == pytest.approx(evals[-1]["eval_loss/sums"])  # lm: the loop's own per-task loss
    # every task learned something on the shared model
    assert summary["senti/accuracy"] >= 0.8 and summary["ner/f1"] >= 0.3  # an untrained tag head scores ~0
    first = next(r for r in Run(trained).metrics() if "eval_loss/length" in r)
    assert summary["length/loss"] < first["eval_loss/length"] and summary["sums/loss"] < first["eval_loss/sums"]


def test_the_run_reloads_with_every_head(trained: Path) -> None:
    model = load_multihead(Run(trained))
    assert set(model.heads) == {"senti", "length", "ner"}  # the lm task uses the model's own output layer
    heads_json = json.loads((trained / "model" / "heads.json").read_text())
    assert heads_json["length"]["loss_weight"] == 2.0 and heads_json["sums"]["kind"] == "lm"
    (result,) = RunFolder(trained).eval_results()
    saved = [json.loads(x) for x in RunFolder.predictions_path(result).read_text(encoding="utf-8").splitlines()]
    saved = [r for r in saved if r["task"] == "length"]
    tok = Run(trained).load_tokenizer()
    samples = [RegSample(Tokenized(tok(" ".join(["go"] * round(r["reference"] * 4)))["input_ids"][:48], []), 0.0)
               for r in saved]
    for s in samples:
        s.seq.labels = [IGNORE_INDEX] * len(s.seq.input_ids)
    again = task_predictions(model, "length", samples, tok.pad_token_id, 8, "cpu")
    assert again == pytest.approx([r["prediction"] for r in saved], abs=1e-5)
    assert F.mse_loss(torch.tensor(again), torch.tensor([r["reference"] for r in saved])) >= 0  # real numbers
