"""benchmarks/scripts/dpo_heldout.py: the split keeps prompts apart, and scoring with a cached base model
gives the same numbers as scoring without it (tiny-llama, a 2-step DPO run)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

import tunelab
from tunelab.models import load_model

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "scripts" / "dpo_heldout.py"
MAX_LEN = 48


def _script():
    spec = importlib.util.spec_from_file_location("dpo_heldout", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def split_and_run(shared_data: Path, tmp_path_factory):
    """(script module, split folder, run folder): 12 real pairs split by prompt, DPO trained 2 steps on the rest."""
    ev = _script()
    tmp = tmp_path_factory.mktemp("heldout")
    records = json.loads((shared_data / "llamafactory_demo" / "dpo_en_demo.json").read_text(encoding="utf-8"))[:12]
    (tmp / "pairs.json").write_text(json.dumps(records), encoding="utf-8")
    ev.split(tmp / "pairs.json", tmp / "split", heldout=0.25, seed=0)
    cfg = {"model": {"name": "tiny-llama"}, "stage": "dpo", "output_dir": str(tmp / "run"),
           "data": {"train": str(tmp / "split" / "train.json"), "max_length": MAX_LEN, "val_size": 0},
           "method": {"name": "lora", "r": 4, "alpha": 8},
           "train": {"max_steps": 2, "batch_size": 2, "lr": 5e-2, "warmup_ratio": 0.0, "report": False,
                     "save_every": 1}}
    tunelab.train(cfg, progress=False)
    return ev, tmp / "split", tmp / "run"


def test_split_keeps_each_prompt_on_one_side(split_and_run) -> None:
    _, split, _ = split_and_run
    train = json.loads((split / "train.json").read_text())
    held = json.loads((split / "heldout.json").read_text())
    key = lambda rec: json.dumps(rec["conversations"], sort_keys=True)
    assert len(train) + len(held) == 12 and held
    assert {key(r) for r in train}.isdisjoint({key(r) for r in held})


def test_cached_base_gives_the_same_scores_and_a_stale_cache_is_recomputed(split_and_run, tmp_path: Path) -> None:
    ev, split, run = split_and_run
    held = split / "heldout.json"
    plain = ev.score(run, held, None, batch_size=2)
    cache = tmp_path / "base.json"
    first = ev.score(run, held, None, batch_size=2, base_cache=cache)
    saved = json.loads(cache.read_text())
    assert saved["key"]["max_length"] == MAX_LEN and len(saved["chosen"]) == plain["pairs"]
    # a checkpoint scored from the cache: its base numbers are the uncached ones
    step1 = ev.score(run, held, None, batch_size=2, checkpoint=run / "checkpoints" / "step-000001", base_cache=cache)
    step1_plain = ev.score(run, held, None, batch_size=2, checkpoint=run / "checkpoints" / "step-000001")
    assert plain == {**first, "checkpoint": plain["checkpoint"]}
    assert step1 == step1_plain
    # the base log-probs in the cache are the base model's: tiny-llama loaded alone scores the same pairs alike
    _, tok, tpl = ev.load_tuned(ev.Run(run), None)
    samples = ev.pair_samples(ev.load_preference(str(held)), tok, tpl, MAX_LEN)
    base_c, base_r = ev.pair_logps(load_model("tiny-llama").eval(), samples, tok.pad_token_id, 2)
    assert torch.allclose(torch.tensor(saved["chosen"]), base_c, atol=1e-4)
    assert torch.allclose(torch.tensor(saved["rejected"]), base_r, atol=1e-4)
    assert plain["pairs_cut"] == sum(s.chosen.truncated or s.rejected.truncated for s in samples)
    # another length does not read the cache of this one
    longer = ev.score(run, held, MAX_LEN * 2, batch_size=2, base_cache=cache)
    assert json.loads(cache.read_text())["key"]["max_length"] == MAX_LEN * 2
    assert longer == ev.score(run, held, MAX_LEN * 2, batch_size=2)
