"""EWC and the optim section inside real stages: the optimizer config comes from memory (not from the run
folder's config.yaml), and EWC's reference data is read by the stage itself, so a preference run computes its
Fisher on preference pairs through the pair collator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import tunelab
from tunelab.config import ConfigError, build_config
from tunelab.config.optim import EwcCfg
from tunelab.data.stage_formats import load_preference
from tunelab.engine import regularise as ewc_module
from tunelab.run import Run
from tunelab.runfolder import EWC_STATE_FILE, RunFolder
from tunelab.stages import preference
from tunelab.training.pairs import PairSample, pair_samples

MAX_LEN = 48


@pytest.fixture(scope="module")
def pair_files(shared_data: Path, tmp_path_factory) -> tuple[Path, Path]:
    """Training pairs and separate reference pairs (the "old task") from LLaMA-Factory's dpo_en_demo."""
    records = json.loads((shared_data / "llamafactory_demo" / "dpo_en_demo.json").read_text(encoding="utf-8"))
    folder = tmp_path_factory.mktemp("ewc-pairs")
    (folder / "train.json").write_text(json.dumps(records[:6]), encoding="utf-8")
    (folder / "old.json").write_text(json.dumps(records[6:10]), encoding="utf-8")
    return folder / "train.json", folder / "old.json"


def dpo_cfg(train: Path, old: Path, out: Path) -> dict:
    return {"model": {"name": "tiny-llama"}, "stage": "dpo", "output_dir": str(out),
            "data": {"train": str(train), "max_length": MAX_LEN, "val_size": 0.0},
            "method": {"name": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
            "train": {"max_steps": 2, "batch_size": 2, "lr": 5e-3, "warmup_ratio": 0.0, "report": False},
            "preference": {"precompute_ref": True},
            "optim": {"ewc": {"lambda_": 5.0, "data": str(old), "samples": 3}}}


def test_ewc_in_a_dpo_run_uses_the_stages_own_pairs_and_collator(pair_files, tmp_path, monkeypatch):
    train, old = pair_files
    seen: dict = {}
    original = ewc_module.diagonal_fisher

    def spy(model, samples, collate_fn, loss_fn, device):
        fisher = original(model, samples, collate_fn, loss_fn, device)
        # an independent estimate for one LoRA matrix: mean squared gradient of each pair's mean loss,
        # through the stage's own collator and step (pairs, precomputed reference log-probs)
        name, param = next((n, p) for n, p in model.named_parameters() if "lora_B" in n)
        model.eval()
        expected = torch.zeros_like(param, dtype=torch.float32)
        for s in samples:
            model.zero_grad(set_to_none=True)
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in collate_fn([s]).items()}
            loss_sum, n = loss_fn(model, batch)[:2]
            (loss_sum / max(n, 1)).backward()
            expected += param.grad.detach().float() ** 2 / len(samples)
        model.zero_grad(set_to_none=True)
        seen.update(samples=list(samples), name=name, expected=expected, fisher=fisher[name].clone())
        return fisher

    monkeypatch.setattr(ewc_module, "diagonal_fisher", spy)
    run = tunelab.train(dpo_cfg(train, old, tmp_path / "dpo-ewc"), progress=False)
    assert run.summary["steps"] == 2 and Run(run.path).config.optim.ewc.lambda_ == 5.0

    # the Fisher saw 3 preference pairs of the reference file, tokenized exactly as the stage tokenizes
    tok, tpl = run.load_tokenizer(), run.chat_template
    want = pair_samples(load_preference(str(old)), tok, tpl, MAX_LEN)[:3]
    got = seen["samples"]
    assert len(got) == 3 and all(isinstance(s, PairSample) for s in got)
    assert [s.chosen.input_ids for s in got] == [s.chosen.input_ids for s in want]
    assert [s.rejected.input_ids for s in got] == [s.rejected.input_ids for s in want]
    assert all(s.ref is not None for s in got)  # reference log-probs precomputed, as for the training pairs
    # its value is the stage-batch definition, is not all zero, and is what the run stored for resuming
    torch.testing.assert_close(seen["fisher"], seen["expected"])
    assert float(seen["fisher"].sum()) > 0
    stored = load_file(str(tmp_path / "dpo-ewc" / EWC_STATE_FILE))
    torch.testing.assert_close(stored[f"fisher.{seen['name']}"], seen["fisher"])


def test_optim_reaches_fit_from_memory_even_without_a_config_yaml(pair_files, tmp_path, monkeypatch):
    """setup_run writes config.yaml; fit must not read it back (other FSDP ranks could read it before rank 0
    wrote it). With the write suppressed, the stage's optim section still reaches the optimizer."""
    from tunelab.engine import loop

    train, old = pair_files
    captured = {}
    original = loop.build_optimizer

    def spy(model, lr, weight_decay, device, optim=None):
        captured["optim"] = optim
        return original(model, lr, weight_decay, device, optim)

    monkeypatch.setattr(loop, "build_optimizer", spy)
    monkeypatch.setattr(RunFolder, "write_config", lambda self, cfg: None)
    cfg = dpo_cfg(train, old, tmp_path / "no-config")
    cfg["optim"] = {"head_lr_scale": 2.0, "betas": [0.8, 0.99]}
    preference.run(build_config(cfg), progress=False)  # the stage itself: a Run would need the config.yaml
    assert not (tmp_path / "no-config" / "config.yaml").exists()
    assert captured["optim"].head_lr_scale == 2.0 and tuple(captured["optim"].betas) == (0.8, 0.99)


def test_ewc_reference_data_needs_the_stages_loader(pair_files):
    _, old = pair_files
    with pytest.raises(ConfigError, match="optim.ewc.data: this stage cannot read reference data"):
        ewc_module.reference_samples(EwcCfg(data=str(old), samples=2), [], None)
    assert ewc_module.reference_samples(EwcCfg(samples=2), [1, 2, 3], None) == [1, 2]
    assert ewc_module.reference_samples(EwcCfg(data=str(old), samples=2), [], lambda p: [p, p, p]) == [str(old)] * 2

