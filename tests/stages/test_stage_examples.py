"""Every stage example config validates, and runs one step through the real CLI on tiny-llama."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.config import load_config

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = {path.stem: path for path in sorted((REPO / "examples").glob("*.yaml"))}
STAGE_EXAMPLES = [name for name in EXAMPLES if not name.startswith("sft")]
SMALL = ["model.name=tiny-llama", "data.max_samples=4", "data.max_length=32", "data.val_size=0.0", "data.eval=null",
         "train.max_steps=1", "train.batch_size=2", "train.grad_accum=1", "train.eval_every=null",
         "train.report=false", "grpo.max_new_tokens=4",
         "selftrain.max_new_tokens=4"]
EXTRA = {"distill_lora": ["distill.teacher=tiny-qwen2"],  # the example's teacher is a run made by sft_lora.yaml
         # threshold 1.0: no pseudo-label is kept, so the run is one labelled round (one metrics line)
         "selftrain_lora": ["selftrain.threshold=1.0"]}
# the worked examples read ../shared/data (or a prepared subset of it); here the shared folder is named directly
FUDAN = ("fudan_sft", "fudan_classify_head", "fudan_classify_head_freeze")


def test_there_is_an_example_for_every_stage() -> None:
    stages = {load_config(path).stage for path in EXAMPLES.values()}
    from tunelab.api import STAGES

    assert stages == set(STAGES)  # every registered stage has an example, and every example a stage


@pytest.mark.parametrize("name", STAGE_EXAMPLES)
def test_example_runs_one_step_through_the_cli(name: str, tmp_path: Path, shared_data: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)  # example data paths are relative to the repository root
    out = tmp_path / name
    if name == "ppo_lora":  # its reward model is a run of the reward example
        args = ["train", str(EXAMPLES["reward_lora"]), *SMALL, f"output_dir={tmp_path / 'rm'}", "--quiet"]
        assert CliRunner().invoke(app, args).exit_code == 0
        EXTRA["ppo_lora"] = [f"ppo.reward_model={tmp_path / 'rm'}"]
    if name in FUDAN:
        EXTRA[name] = [f"data.train={shared_data / 'fudan_news_train.jsonl'}"]
    if name == "dpo_real_pairs":  # its training file is a split of the demo pairs (benchmarks/scripts/dpo_heldout.py)
        EXTRA[name] = [f"data.train={shared_data / 'llamafactory_demo' / 'dpo_en_demo.json'}"]
    if name == "grpo_addition":  # its data comes from scripts/stage_evidence.py grpo; the same records here
        sums = [{"instruction": f"What is {a} + {b}? Answer with just the number.", "output": str(a + b)}
                for a, b in [(2, 3), (4, 5), (6, 7), (8, 9)]]
        (tmp_path / "sums.json").write_text(json.dumps(sums), encoding="utf-8")
        EXTRA[name] = [f"data.train={tmp_path / 'sums.json'}"]
    result = CliRunner().invoke(app, ["train", str(EXAMPLES[name]), *SMALL, *EXTRA.get(name, []), f"output_dir={out}",
                                        "--quiet"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 1 and math.isfinite(lines[0]["loss"])
    info = json.loads((out / "run.json").read_text())
    weights = "model" if load_config(EXAMPLES[name]).method.name == "freeze" else "adapter"
    assert info["stage"] == load_config(EXAMPLES[name]).stage and (out / weights).is_dir()
    if weights == "adapter":
        assert (out / "adapter" / "adapter_config.json").is_file()


def test_config_stage_names_and_the_registry_agree() -> None:
    from typing import get_args

    from tunelab.api import STAGES
    from tunelab.config.stages import StageName

    assert set(get_args(StageName)) == set(STAGES)
