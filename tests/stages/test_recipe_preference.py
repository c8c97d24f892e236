"""The dpo / orpo / simpo / kto stages end to end on tiny-llama: step-1 losses, updates, files, reloads."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import tunelab
from tunelab.data.pipeline import collate
from tunelab.data.stage_formats import load_preference
from tunelab.data.templates import resolve_template
from tunelab.models import load_model, load_tokenizer
from tunelab.run import Run
from tunelab.training.common import sequence_logps, target_counts
from tunelab.stages.preference import (
    PreferenceLogps,
    PreferenceParams,
    orpo_loss,
    pair_samples,
)

MAX_LEN = 48


@pytest.fixture(scope="module")
def pairs_file(shared_data: Path, tmp_path_factory) -> Path:
    """Six real pairs from LLaMA-Factory's dpo_en_demo (ShareGPT conversations + chosen/rejected)."""
    records = json.loads((shared_data / "llamafactory_demo" / "dpo_en_demo.json").read_text(encoding="utf-8"))[:6]
    path = tmp_path_factory.mktemp("pref") / "pairs.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def cfg(stage: str, data: Path, out: Path, method: str = "lora", steps: int = 2, val_size: float = 0.34,
        **preference) -> dict:
    return {"model": {"name": "tiny-llama"}, "stage": stage, "output_dir": str(out),
            "data": {"train": str(data), "max_length": MAX_LEN, "val_size": val_size},
            "method": {"name": method, **({"r": 4, "alpha": 8} if method == "lora" else {})},
            "train": {"max_steps": steps, "batch_size": 2, "lr": 5e-3, "warmup_ratio": 0.0, "report": False},
            "preference": preference}


def train_lines(run: Run) -> list[dict]:
    return [m for m in run.metrics() if "loss" in m]


def test_dpo_lora_starts_at_log2_and_reloads_to_the_logged_eval_loss(pairs_file: Path, tmp_path: Path) -> None:
    run = tunelab.train(cfg("dpo", pairs_file, tmp_path / "dpo", steps=3), progress=False)
    lines = train_lines(run)
    # step 1: LoRA's B = 0, so the policy is the reference and every log-ratio is 0: loss = -log sigmoid(0)
    assert lines[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert lines[0]["rewards/chosen"] == lines[0]["rewards/rejected"] == lines[0]["rewards/margins"] == 0.0
    assert all(math.isfinite(m["loss"]) for m in lines) and len(lines) == 3
    assert {"rewards/accuracies", "logps/chosen", "logps/rejected"} <= lines[-1].keys()
    assert lines[1]["rewards/margins"] != 0.0  # the adapter moved after one update
    # the saved adapter has trained B matrices
    adapter = load_file(str(run.path / "adapter" / "adapter_model.safetensors"))
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in adapter.items())
    assert json.loads((run.path / "run.json").read_text())["stage"] == "dpo"
    # reload the run, recompute DPO on the validation pairs with the base model as reference: the logged eval_loss
    ev = [m for m in run.metrics() if "eval_loss" in m][-1]
    model, tok, _ = run.load_model(device="cpu")
    base = load_model("tiny-llama")
    _, val = split(pairs_file, run)
    batch = collate([s.chosen for s in val] + [s.rejected for s in val], tok.pad_token_id)
    with torch.no_grad():
        pol = sequence_logps(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                             batch["labels"])
        ref = sequence_logps(base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                             batch["labels"])
    n = len(val)
    margin = 0.1 * ((pol[:n] - ref[:n]) - (pol[n:] - ref[n:]))
    assert ev["eval_loss"] == pytest.approx(float(-torch.nn.functional.logsigmoid(margin).mean()), rel=1e-4)
    assert ev["eval_rewards/margins"] == pytest.approx(float(margin.mean()), abs=1e-5)


def split(path: Path, run: Run):
    """The stage's own train/validation split of `path`, tokenized as the run did."""
    from tunelab.data.pipeline import split_train_val

    tok = load_tokenizer("tiny-llama")
    tpl = resolve_template(tok, None)
    train, val = split_train_val(load_preference(path), run.config.data.val_size, run.config.train.seed)
    return pair_samples(train, tok, tpl, MAX_LEN), pair_samples(val, tok, tpl, MAX_LEN)


@pytest.mark.parametrize(("loss", "beta", "expected"), [("ipo", 0.1, (1 / 0.2) ** 2), ("hinge", 0.5, 1.0)])
def test_dpo_variants_start_at_their_zero_margin_value(pairs_file: Path, tmp_path: Path, loss: str, beta: float,
                                                       expected: float) -> None:
    run = tunelab.train(cfg("dpo", pairs_file, tmp_path / loss, steps=1, val_size=0.0, loss=loss, beta=beta),
                        progress=False)
    assert train_lines(run)[0]["loss"] == pytest.approx(expected, rel=1e-6)


def test_precomputed_reference_gives_the_same_losses(pairs_file: Path, tmp_path: Path) -> None:
    live = train_lines(tunelab.train(cfg("dpo", pairs_file, tmp_path / "a", steps=2, val_size=0.0), progress=False))
    pre = train_lines(tunelab.train(cfg("dpo", pairs_file, tmp_path / "b", steps=2, val_size=0.0,
                                        precompute_ref=True), progress=False))
    assert [m["loss"] for m in pre] == pytest.approx([m["loss"] for m in live], rel=1e-5)
    assert pre[1]["rewards/margins"] == pytest.approx(live[1]["rewards/margins"], rel=1e-4, abs=1e-7)


def test_dpo_full_uses_a_frozen_copy_as_reference(pairs_file: Path, tmp_path: Path) -> None:
    run = tunelab.train(cfg("dpo", pairs_file, tmp_path / "full", method="full", steps=2, val_size=0.0),
                        progress=False)
    lines = train_lines(run)
    assert lines[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert lines[1]["loss"] != pytest.approx(math.log(2), abs=1e-6)  # the copy stayed, the policy moved
    trained = load_file(str(run.path / "model" / "model.safetensors"))
    base = load_model("tiny-llama").state_dict()
    changed = [k for k, v in trained.items() if not torch.equal(v, base[k])]
    assert any("q_proj" in k for k in changed) and any("mlp" in k for k in changed)


def test_orpo_step_one_matches_the_loss_on_the_base_model(pairs_file: Path, tmp_path: Path) -> None:
    run = tunelab.train({**cfg("orpo", pairs_file, tmp_path / "orpo", steps=1, val_size=0.0),
                         "train": {"max_steps": 1, "batch_size": 6, "report": False}}, progress=False)
    train, _ = split(pairs_file, run)
    batch = collate([s.chosen for s in train] + [s.rejected for s in train], 2)
    with torch.no_grad():
        logits = load_model("tiny-llama")(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logps, counts = sequence_logps(logits, batch["labels"]), target_counts(batch["labels"])
    expected, _ = orpo_loss(PreferenceLogps(logps[:6], logps[6:], counts[:6], counts[6:]), PreferenceParams(beta=0.1))
    line = train_lines(run)[0]
    assert line["loss"] == pytest.approx(float(expected), rel=1e-5)
    assert line["nll_loss"] == pytest.approx(float(-logps[:6].sum() / counts[:6].sum()), rel=1e-5)


def test_simpo_trains_without_a_reference(pairs_file: Path, tmp_path: Path) -> None:
    run = tunelab.train(cfg("simpo", pairs_file, tmp_path / "simpo", steps=2, val_size=0.0), progress=False)
    lines = train_lines(run)
    assert all(math.isfinite(m["loss"]) for m in lines)
    # SimPO's reward is beta (2.0 by default) x the mean token log-prob: strongly negative on a random model
    assert lines[0]["rewards/chosen"] == pytest.approx(2.0 * lines[0]["logps/chosen"], rel=1e-5)
    assert run.config.preference.beta is None and run.summary["data"]["beta"] == 2.0


def test_kto_on_llamafactory_data_starts_at_one_half(shared_data: Path, tmp_path: Path) -> None:
    records = json.loads((shared_data / "llamafactory_demo" / "kto_en_demo.json").read_text(encoding="utf-8"))
    data = tmp_path / "kto.json"
    data.write_text(json.dumps(records[:6]), encoding="utf-8")
    run = tunelab.train(cfg("kto", data, tmp_path / "kto", steps=2, val_size=0.0), progress=False)
    lines = train_lines(run)
    # step 1: policy == reference, z0 = 0, every example's loss is 1 - sigmoid(0) = 0.5
    assert lines[0]["loss"] == pytest.approx(0.5, abs=1e-7) and lines[0]["kl"] == 0.0
    assert lines[1]["kl"] >= 0.0 and math.isfinite(lines[1]["loss"])
    assert Run(run.path).summary["steps"] == 2


def test_a_pair_without_rejected_names_the_record(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "hi", "chosen": "a", "rejected": "b"}\n{"prompt": "hi", "chosen": "a"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: field 'rejected' is missing"):
        tunelab.train(cfg("dpo", bad, tmp_path / "x"), progress=False)


def test_pair_losses_accumulate_exactly(pairs_file: Path, tmp_path: Path) -> None:
    """6 pairs x 1 micro-batch == 3 pairs x 2 micro-batches: the loop normalizes by pairs (loss_count), not tokens."""
    one = cfg("dpo", pairs_file, tmp_path / "one", steps=2, val_size=0.0)
    two = cfg("dpo", pairs_file, tmp_path / "two", steps=2, val_size=0.0)
    one["train"].update(batch_size=6, grad_accum=1)
    two["train"].update(batch_size=3, grad_accum=2)
    for c in (one, two):
        c["method"]["dropout"] = 0.0  # dropout masks depend on the batch shape
    a, b = (train_lines(tunelab.train(c, progress=False)) for c in (one, two))
    assert b[0]["loss"] == pytest.approx(a[0]["loss"], rel=1e-6)
    assert b[0]["grad_norm"] == pytest.approx(a[0]["grad_norm"], rel=1e-4)  # the same gradient
    # after one Adam step the two runs agree up to padding-width float noise
    assert b[1]["loss"] == pytest.approx(a[1]["loss"], rel=1e-4)
    assert b[1]["rewards/margins"] == pytest.approx(a[1]["rewards/margins"], rel=1e-2)
