"""A finished run is a base model: pretrain -> sft from its run, chains of runs, clear errors otherwise."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from peft import PeftModel

import tunelab
from tunelab.bases import load_model
from tunelab.data.formats import parse_records
from tunelab.data.io import read_records
from tunelab.data.templates import tokenize_conversation
from tunelab.models import ModelNotFound, load_tokenizer, resolve_model
from tunelab.models.loader import base_chain, root_model
from tunelab.run import Run

IDS = torch.tensor([[1, 345, 2020, 77, 9000, 12, 4040, 5]])


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    """A work folder holding a small domain text, an SFT file and a finished pretrain run `pt` (LoRA)."""
    work = tmp_path_factory.mktemp("chain")
    rows = [json.loads(line) for line in (shared_data / "llamafactory_demo" / "c4_demo.jsonl").read_text().splitlines()]
    (work / "domain.jsonl").write_text("".join(json.dumps({"text": r["text"][:400]}) + "\n" for r in rows[:12]))
    sft = json.loads((shared_data / "llamafactory_demo" / "alpaca_en_demo.json").read_text(encoding="utf-8"))[:6]
    (work / "sft.json").write_text(json.dumps(sft))
    train(work, "pt", "tiny-llama", stage="pretrain", data="domain.jsonl", chat_template="alpaca")
    return work


def train(work: Path, out: str, base: str, stage: str = "sft", data: str = "sft.json", method: str = "lora",
          chat_template: str | None = None) -> Run:
    """One short run inside `work`, with paths relative to it (as a user's configs are)."""
    cfg = {"model": {"name": base, "chat_template": chat_template}, "stage": stage, "output_dir": out,
           "data": {"train": data, "max_length": 48, "val_size": 0.0},
           "method": {"name": "lora", "r": 4, "alpha": 8} if method == "lora" else {"name": method},
           "train": {"max_steps": 2, "batch_size": 16, "lr": 5e-3, "warmup_ratio": 0.0, "report": False}}
    here = Path.cwd()
    try:
        import os

        os.chdir(work)
        return Run(tunelab.train(cfg, progress=False).path.resolve())
    finally:
        os.chdir(here)


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits  # (1, 8, V)


def test_a_finished_run_loads_as_its_merged_model_with_its_tokenizer(root: Path) -> None:
    run = root / "pt"
    assert resolve_model(str(run)).kind == "run"
    trained, _, template = Run(run).load_model(device="cpu", merged=True)
    as_base = load_model(str(run))
    assert not hasattr(as_base, "peft_config")  # a plain model: the next run puts its own adapter on it
    torch.testing.assert_close(logits(as_base), logits(trained), rtol=0, atol=1e-5)
    assert not torch.allclose(logits(as_base), logits(load_model("tiny-llama")), atol=1e-3)  # pretraining moved it
    tok = load_tokenizer(str(run))
    assert tok.chat_template == template == (run / "chat_template.jinja").read_text(encoding="utf-8")


def test_sft_from_a_pretrain_run_starts_from_its_weights_and_records_the_chain(root: Path) -> None:
    run = train(root, "sft", "pt")  # model.name relative to the working folder, like runs/<pretrain-run>
    base, tok, _ = Run(root / "pt").load_model(device="cpu", merged=True)
    template = run.chat_template
    assert template == (root / "pt" / "chat_template.jinja").read_text(encoding="utf-8")  # the template travels
    # LoRA's B starts at zero, so step 1's loss is the pretrain run's model's loss on all six samples (one batch)
    convs, _ = parse_records(read_records(root / "sft.json"), "auto")
    total = count = 0.0
    with torch.no_grad():
        for conv in convs:
            t = tokenize_conversation(tok, template, conv, 48)
            labels = torch.tensor([t.labels])
            n = int((labels[:, 1:] != -100).sum())
            total += float(base(input_ids=torch.tensor([t.input_ids]), labels=labels).loss) * n
            count += n
    first = next(m for m in run.metrics() if "loss" in m)
    assert first["loss"] == pytest.approx(total / count, rel=1e-5)
    assert run.info["base_model"] == "pt" and run.info["root_model"] == "tiny-llama"
    assert run.info["base_chain"] == [{"run": str((root / "pt").resolve()), "stage": "pretrain", "method": "lora",
                                       "base_model": "tiny-llama"}]


def test_a_chain_of_two_runs_equals_merging_each_adapter_in_turn(root: Path, monkeypatch) -> None:
    if not (root / "sft").is_dir():
        train(root, "sft", "pt")
    top = train(root, "top", "sft")
    assert [link["run"] for link in top.info["base_chain"]] == [str((root / n).resolve()) for n in ("sft", "pt")]
    assert base_chain(str(root / "top"))[-1]["base_model"] == "tiny-llama" == root_model(str(root / "top"))
    # the reference, with PEFT directly: tiny-llama + pt merged + sft merged + top's adapter
    model = load_model("tiny-llama")
    for name in ("pt", "sft"):
        model = PeftModel.from_pretrained(model, str(root / name / "adapter")).merge_and_unload()
    model = PeftModel.from_pretrained(model, str(root / "top" / "adapter")).eval()
    monkeypatch.chdir(root.parent)  # relative base names no longer resolve; run.json's absolute chain does
    loaded, _, _ = Run(root / "top").load_model(device="cpu")
    torch.testing.assert_close(logits(loaded), logits(model), rtol=0, atol=1e-5)


def test_a_full_fine_tuned_run_is_a_base_too(root: Path) -> None:
    full = train(root, "full", "tiny-llama", method="full")
    saved, _, _ = full.load_model(device="cpu")
    torch.testing.assert_close(logits(load_model(str(full.path))), logits(saved), rtol=0, atol=0)


def test_an_unfinished_or_scoring_run_is_refused_with_the_fix(root: Path, tmp_path: Path) -> None:
    unfinished = tmp_path / "half"
    shutil.copytree(root / "pt", unfinished)
    (unfinished / "summary.json").unlink()
    with pytest.raises(ModelNotFound, match=r"half: a run folder, but not a finished run \(no summary.json or "
                                            r"adapter/\); finish it with `tunelab train .*half/config.yaml "
                                            r"train.resume=auto`"):
        load_model(str(unfinished))
    with pytest.raises(ModelNotFound, match="not a finished run"):
        train(root, str(tmp_path / "next"), str(unfinished))
    scorer = tmp_path / "scorer"
    shutil.copytree(root / "pt", scorer)
    cfg = yaml.safe_load((scorer / "config.yaml").read_text())
    (scorer / "config.yaml").write_text(yaml.safe_dump({**cfg, "stage": "classify"}))
    with pytest.raises(ModelNotFound, match="a classify run scores text and cannot be the base of another run"):
        load_tokenizer(str(scorer))


def test_estimate_reads_a_run_base_through_its_root_model(root: Path) -> None:
    from tunelab.estimate import model_config
    from tunelab.models.tiny import tiny_config

    got, want = model_config(str(root / "pt")), tiny_config("tiny-llama")
    assert (got.hidden_size, got.num_hidden_layers, got.vocab_size) == (want.hidden_size, want.num_hidden_layers,
                                                                         want.vocab_size)


def test_the_plain_loader_refuses_a_run_and_names_the_one_that_loads_it(root: Path) -> None:
    """tunelab.models loads plain models (methods builds on it); merging a run needs methods, so tunelab.bases does it."""
    from tunelab.models import load_model as load_plain_model

    with pytest.raises(ModelNotFound, match=r"pt: a tunelab run folder; load it with tunelab.bases.load_model"):
        load_plain_model(str(root / "pt"))
    torch.testing.assert_close(logits(load_model("tiny-llama")), logits(load_plain_model("tiny-llama")), rtol=0, atol=0)
