"""Classify-stage options on tiny-llama: mean pooling (saved and reloaded), head learning rate, prompt fitting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import tunelab
from tunelab.config.optim import OptimCfg
from tunelab.data.stage_formats import ClassExample
from tunelab.data.templates import render, resolve_template
from tunelab.engine.optim import lr_multipliers
from tunelab.models import load_model, load_tokenizer
from tunelab.run import Run
from tunelab.training.classes import fit_prompt, head_input
from tunelab.training.heads import ScoreModel, decoder_of, load_scorer


def test_mean_pooling_averages_the_real_tokens_and_ignores_padding() -> None:
    torch.manual_seed(0)
    model = ScoreModel(load_model("tiny-llama"), 3, pooling="mean").eval()
    ids = torch.tensor([[5, 9, 12, 7, 0, 0], [3, 4, 8, 15, 21, 6]])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    with torch.no_grad():
        scores = model(ids, mask)  # (2, 3)
        alone = model(ids[:1, :4], mask[:1, :4])  # row 0 without its padding
        hidden = decoder_of(model.lm)(input_ids=ids[1:], attention_mask=mask[1:]).last_hidden_state[0]  # (T, H)
    torch.testing.assert_close(scores[:1], alone)
    torch.testing.assert_close(scores[1], model.head(hidden.mean(0)))
    with pytest.raises(ValueError, match="unknown pooling 'max'"):
        ScoreModel(model.lm, 2, pooling="max")


def test_head_lr_scale_reaches_the_classifier_head() -> None:
    model = ScoreModel(load_model("tiny-llama"), 2)
    scale = lr_multipliers(model, OptimCfg(head_lr_scale=10.0))
    by_name = {name: scale(name, p) for name, p in model.named_parameters()}
    assert by_name["head.weight"] == 10.0
    assert all(v == 1.0 for name, v in by_name.items() if name != "head.weight")


def test_a_long_prompt_is_cut_inside_its_document() -> None:
    tok = load_tokenizer("tiny-llama")
    tpl = resolve_template(tok, None)
    doc = "Headline: the river floods the valley. " + " ".join(f"word{i}" for i in range(300))
    messages = [{"role": "system", "content": "You sort news into topics."},
                {"role": "user", "content": f"News: {doc}\nWhich topic?"}]
    ids = fit_prompt(tok, tpl, messages, 96)
    text = tok.decode(ids)
    assert len(ids) <= 96
    assert "You sort news into topics." in text and "Headline: the river floods" in text
    assert text.rstrip().endswith(tok.decode(fit_prompt(tok, tpl, messages, 10**6)[-8:]).rstrip())  # header kept
    short = [{"role": "user", "content": "Which topic is this?"}]
    full = tok(render(tok, tpl, short, add_generation_prompt=True), add_special_tokens=False)["input_ids"]
    assert fit_prompt(tok, tpl, short, 96) == full  # a prompt that fits is left as rendered
    # head_input: text reads the last user turn as raw text, start kept
    sample = head_input(ClassExample("x", prompt=messages), tok, tpl, 12, as_text=True)
    assert sample.input_ids == tok(messages[-1]["content"])["input_ids"][:12]


def test_mean_pooled_head_trains_saves_and_reloads(tmp_path: Path) -> None:
    rows = [("great lovely day", "pos"), ("happy bright sun", "pos"), ("sweet warm smile", "pos"),
            ("awful cold night", "neg"), ("sad grey rain", "neg"), ("bitter angry word", "neg")]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": t}], "label": y}) + "\n"
                            for t, y in rows), encoding="utf-8")
    run = tunelab.train({
        "model": {"name": "tiny-llama"}, "stage": "classify", "output_dir": str(tmp_path / "cls"),
        "data": {"train": str(path), "eval": str(path), "max_length": 16},
        "method": {"name": "lora", "r": 4, "alpha": 8}, "classify": {"pooling": "mean", "head_input": "text"},
        "optim": {"head_lr_scale": 5.0},
        "train": {"max_steps": 8, "batch_size": 6, "lr": 1e-2, "warmup_ratio": 0.0, "report": False}},
        progress=False)
    lines = [m for m in run.metrics() if "loss" in m]
    assert lines[-1]["loss"] < lines[0]["loss"]
    meta = json.loads((run.weights_dir() / "head.json").read_text(encoding="utf-8"))
    assert meta["pooling"] == "mean"
    scorer = load_scorer(Run(run.path))
    assert scorer.pooling == "mean"
    (report,) = sorted((run.path / "eval").glob("validation-*.json"))
    preds = [json.loads(line) for line in report.with_suffix(".predictions.jsonl").read_text().splitlines()]
    enc = load_tokenizer("tiny-llama")([rows[0][0]], return_tensors="pt")
    with torch.no_grad():
        probs = scorer(enc["input_ids"], enc["attention_mask"]).softmax(-1)[0]
    assert probs.tolist() == pytest.approx([preds[0]["probs"]["neg"], preds[0]["probs"]["pos"]], abs=1e-5)
