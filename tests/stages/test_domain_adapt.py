"""Domain adaptation of a head classifier (domain: dann | mmd): the reversed gradient, the MMD value, a run."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.config import ConfigError
from tunelab.data.pipeline import collate
from tunelab.data.templates import IGNORE_INDEX, Tokenized
from tunelab.models import load_model
from tunelab.run import Run
from tunelab.training.domain import DomainClassifier, domain_step, grad_reverse, mmd2
from tunelab.training.heads import ScoreModel, load_scorer


def test_domain_needs_a_head_classifier() -> None:
    import tunelab

    with pytest.raises(ConfigError, match="domain: set, but stage is sft"):
        tunelab.train({"data": {"train": "x.json"}, "domain": {"target": "t.json"}}, progress=False)
    with pytest.raises(ConfigError, match="with classify.mode label_tokens"):
        tunelab.train({"data": {"train": "x.json"}, "stage": "classify", "classify": {"mode": "label_tokens"},
                       "domain": {"target": "t.json"}}, progress=False)


def test_mmd_against_a_direct_double_sum() -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(5, 3, generator=g), torch.randn(4, 3, generator=g) + 1.0
    z = torch.cat([x, y])
    d2 = [[float(((a - b) ** 2).sum()) for b in z] for a in z]
    base = sum(map(sum, d2)) / (9 * 8)
    k = [[sum(math.exp(-v / (s * base + 1e-8)) for s in (0.25, 0.5, 1.0, 2.0, 4.0)) for v in row] for row in d2]
    xx = sum(k[i][j] for i in range(5) for j in range(5)) / 25
    yy = sum(k[i][j] for i in range(5, 9) for j in range(5, 9)) / 16
    xy = sum(k[i][j] for i in range(5) for j in range(5, 9)) / 20
    assert float(mmd2(x, y)) == pytest.approx(xx + yy - 2 * xy, rel=1e-4)
    assert float(mmd2(x, x)) == pytest.approx(0.0, abs=1e-5)


def _batch(n: int, offset: int) -> dict:
    return collate([Tokenized([(offset + 5 * i + j) % 300 + 10 for j in range(4 + i % 3)], [IGNORE_INDEX] * (4 + i % 3))
                    for i in range(n)], pad_id=0)


def test_dann_reverses_the_domain_gradient_below_the_layer_and_not_above() -> None:
    torch.manual_seed(0)
    model = ScoreModel(load_model("tiny-llama"), 2, ["a", "b"], seed=1, pooling="mean")
    model.domain = DomainClassifier(64, 16, "cpu", torch.float32)
    src, tgt = _batch(3, 0), _batch(4, 100)
    batch = {**src, "targets": torch.tensor([0, 1, 1]), "target_input_ids": tgt["input_ids"],
             "target_attention_mask": tgt["attention_mask"]}
    model.train()

    def grads(loss):
        model.zero_grad()
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    with_domain = grads(domain_step(model, batch, None, "dann", 0.5)[0])
    plain = grads(domain_step(model, {k: v for k, v in batch.items() if not k.startswith("target_")}, None,
                              "dann", 0.5)[0])
    # the domain loss alone, with no reversal, from the same features
    feats = torch.cat([model.features(src["input_ids"], src["attention_mask"]),
                       model.features(tgt["input_ids"], tgt["attention_mask"])])
    bce = F.binary_cross_entropy_with_logits(model.domain(feats), torch.tensor([0.0] * 3 + [1.0] * 4))
    domain_only = grads(bce * 0.5 * 3)
    body = [n for n in domain_only if n.startswith("lm.")]
    assert body and all(torch.allclose(with_domain[n] - plain.get(n, 0), -domain_only[n], rtol=1e-4, atol=1e-5)
                        for n in body)
    for n in (n for n in domain_only if n.startswith("domain.")):  # the domain classifier itself learns normally
        assert torch.allclose(with_domain[n], domain_only[n], rtol=1e-4, atol=1e-6)
    assert torch.equal(grad_reverse(torch.ones(2), 2.0), torch.ones(2))


@pytest.mark.parametrize("method", ["dann", "mmd"])
def test_a_run_with_target_text_trains_logs_the_domain_loss_and_saves_a_plain_classifier(
        method: str, tmp_path: Path) -> None:
    rng = random.Random(0)
    pos, neg = ["sunny", "happy", "warm"], ["rain", "sad", "cold"]
    src = [{"text": " ".join(rng.choice(pos if y == "pos" else neg) for _ in range(3)), "label": y}
           for y in ["pos", "neg"] * 8]
    tgt = [{"text": "NEWS: " + r["text"].upper()} for r in src]  # the same content, another surface
    (tmp_path / "src.jsonl").write_text("".join(json.dumps(r) + "\n" for r in src))
    (tmp_path / "tgt.jsonl").write_text("".join(json.dumps(r) + "\n" for r in tgt))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"""model: {{name: tiny-llama}}
data: {{train: {tmp_path / 'src.jsonl'}, val_size: 0.25, max_length: 24}}
method: {{name: full}}
stage: classify
classify: {{mode: head, pooling: mean}}
domain: {{target: {tmp_path / 'tgt.jsonl'}, method: {method}, weight: 0.5, hidden: 16}}
train: {{max_steps: 4, batch_size: 4, lr: 1.0e-3, report: false}}
output_dir: {tmp_path / 'run'}
""")
    result = CliRunner().invoke(app, ["train", str(cfg), "--quiet"])
    assert result.exit_code == 0, result.output
    lines = [r for r in Run(tmp_path / "run").metrics() if "loss" in r]
    assert len(lines) == 4 and all(math.isfinite(r["domain_loss"]) for r in lines)
    assert ("domain_acc" in lines[0]) == (method == "dann")
    run = Run(tmp_path / "run")
    assert run.summary["data"]["domain"]["method"] == method
    scorer = load_scorer(run)  # an ordinary classifier: no domain weights were saved
    assert not hasattr(scorer, "domain") and scorer.head.out_features == 2
