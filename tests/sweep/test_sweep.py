"""tunelab sweep: the space is checked up front, a worse curve is pruned, the study resumes, the best trial loads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("optuna")
import optuna  # noqa: E402

from tunelab.data.formats import parse_records  # noqa: E402
from tunelab.data.io import read_records  # noqa: E402
from tunelab.data.templates import tokenize_conversation  # noqa: E402
from tunelab.sweep import SpaceError, SweepError, run_sweep  # noqa: E402
from tunelab.sweep.space import parse_space  # noqa: E402
from tunelab.sweep.study import STUDY_NAME, CurveWatch, _run_subprocess  # noqa: E402

SPACE = {"train.lr": {"type": "float", "low": 1.0e-7, "high": 1.0e-2, "log": True}}


@pytest.fixture()
def tiny_config(tmp_path: Path) -> Path:
    """A 2-layer full fine-tune on "a plus b" records: 6 steps, evaluated every 2 on a separate file."""
    rows = [{"instruction": f"What is {a} plus {b}?", "input": "", "output": f"{a + b}"} for a in range(5)
            for b in range(5)]
    (tmp_path / "train.json").write_text(json.dumps(rows[:20]), encoding="utf-8")
    (tmp_path / "val.json").write_text(json.dumps(rows[20:]), encoding="utf-8")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"""model: {{name: tiny-llama}}
data: {{train: {tmp_path / 'train.json'}, eval: {tmp_path / 'val.json'}, max_length: 64}}
method: {{name: full}}
train: {{max_steps: 6, batch_size: 4, lr: 1.0e-3, eval_every: 2, report: false, warmup_ratio: 0.0}}
output_dir: {tmp_path / 'unused'}
""", encoding="utf-8")
    return cfg


def test_space_problems_name_the_file_and_key(tiny_config: Path, tmp_path: Path) -> None:
    with pytest.raises(SpaceError, match=r"space: train.lr: low must be below high \(got low 0.1, high 0.01\)"):
        parse_space({"train.lr": {"type": "float", "low": 0.1, "high": 0.01}})
    with pytest.raises(SpaceError, match="a log-scale range needs low > 0"):
        parse_space({"train.lr": {"type": "float", "low": 0.0, "high": 0.01, "log": True}})
    bad = tmp_path / "space.yaml"
    bad.write_text("train.lerning_rate: [0.1, 0.2]\ntrain.batch_size: {type: int, low: 0, high: 8}\n")
    with pytest.raises(SpaceError) as e:
        run_sweep(tiny_config, bad, trials=1, out=tmp_path / "sw")
    text = str(e.value)
    assert str(bad) in text and "train.lerning_rate" in text and "did you mean train.lr" in text
    assert "train.batch_size = 0" in text  # the low bound the config rejects (gt=0)
    assert not (tmp_path / "sw").exists()  # nothing started


def hf_mean_loss(model, tokenizer, template: str, path: Path, max_length: int) -> float:
    """Mean per-target-token loss of a file, one example at a time with Hugging Face's own loss."""
    total, count = 0.0, 0
    with torch.no_grad():
        for conv in parse_records(read_records(path), "auto")[0]:
            t = tokenize_conversation(tokenizer, template, conv, max_length)
            ids, labels = torch.tensor([t.input_ids]), torch.tensor([t.labels])
            n = int((labels[:, 1:] != -100).sum())
            total += float(model(input_ids=ids, labels=labels).loss) * n
            count += n
    return total / count


def test_worse_curve_is_pruned_study_resumes_and_best_run_loads(tiny_config: Path, tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    # trial 0 learns (lr 3e-3); trial 1 barely moves (lr 1e-7): at its first eval it is worse than the median
    # of the finished trials (trial 0's value at that step), so it stops there
    first = run_sweep(tiny_config, SPACE, trials=2, out=out, startup_trials=1, progress=False,
                      enqueue=[{"train.lr": 3e-3}, {"train.lr": 1e-7}])
    states = [r["state"] for r in first.rows]
    assert states == ["COMPLETE", "PRUNED"]
    pruned = first.rows[1]
    assert pruned["pruned_at_step"] == 2
    curve0 = [r["eval_loss"] for r in first.best_run.metrics() if "eval_loss" in r]
    assert pruned["last_reported"] > curve0[0]  # pruned because it was worse at step 2
    pruned_dir = Path(pruned["run_dir"])
    steps = [json.loads(x)["step"] for x in (pruned_dir / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 2  # stopped at step 2 of 6
    assert not (pruned_dir / "summary.json").exists()

    # a sweep killed while trial 2 ran: the study holds it as RUNNING and its folder has no checkpoint
    study = optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{out / 'study.db'}")
    study.enqueue_trial({"train.lr": 3e-3})  # trial 0's value: its rerun is not worse, so it finishes
    stale = study.ask()
    stale.suggest_float("train.lr", 1e-7, 1e-2, log=True)
    (out / "trials" / "trial-002").mkdir(parents=True)
    (out / "trials" / "trial-002" / "metrics.jsonl").write_text('{"step": 1, "loss": 9.9}\n')
    before = (out / "trials" / "trial-000" / "summary.json").stat().st_mtime_ns

    with pytest.raises(SweepError, match="different metric"):  # a resume must ask the same
        run_sweep(tiny_config, SPACE, trials=3, out=out, metric="eval_ppl", progress=False)
    again = run_sweep(tiny_config, SPACE, trials=3, out=out, startup_trials=1, progress=False)
    assert [r["state"] for r in again.rows] == ["COMPLETE", "PRUNED", "FAIL", "COMPLETE"]
    rerun = again.rows[3]
    assert rerun["restart_of"] == 2 and rerun["train.lr"] == stale.params["train.lr"]  # same values again
    assert not (out / "trials" / "trial-002").exists()  # no checkpoint: started over in its own folder
    assert (out / "trials" / "trial-000" / "summary.json").stat().st_mtime_ns == before  # kept, not rerun
    assert run_sweep(tiny_config, SPACE, trials=3, out=out, progress=False).rows == again.rows  # nothing to do

    # the report: a row per trial, the best one, and both plots
    table = (out / "results.csv").read_text().splitlines()
    assert len(table) == 5 and table[0].startswith("trial,state,value")
    best = json.loads((out / "best.json").read_text())
    assert best["best"]["trial"] == again.best["trial"]
    assert set(best["importance"]) == {"train.lr"}
    assert (out / "objective.png").read_bytes()[:4] == b"\x89PNG" and (out / "importance.png").is_file()

    # the best trial is a normal run: its saved weights give the eval loss it logged
    run = again.best_run
    model, tok, template = run.load_model(device="cpu")
    logged = run.summary["eval_loss"]
    assert hf_mean_loss(model, tok, template, tmp_path / "val.json", 64) == pytest.approx(logged, rel=1e-4)
    assert again.best["value"] == pytest.approx(logged)


class AlwaysPrune:
    """An Optuna trial stand-in whose first report already asks to stop."""

    def __init__(self) -> None:
        self.reports: list[tuple[float, int]] = []

    def report(self, value: float, step: int) -> None:
        self.reports.append((value, step))

    def should_prune(self) -> bool:
        return True


def test_subprocess_trial_is_stopped_by_sigterm_and_saves(tiny_config: Path, tmp_path: Path) -> None:
    """The --nproc path: the trial runs as `tunelab train --nproc N`; pruning ends it with SIGTERM."""
    run_dir = tmp_path / "trial"
    watch = CurveWatch(AlwaysPrune(), "eval_loss", prune=True)
    args = ["train.max_steps=400", f"output_dir={run_dir}"]
    with pytest.raises(optuna.TrialPruned):
        _run_subprocess(tiny_config, args, watch, run_dir, tmp_path / "trial.log", nproc=1, poll_s=0.1)
    steps = [json.loads(x)["step"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert watch.trial.reports[0][1] == 2 and max(steps) < 400  # stopped long before the end
    assert not (run_dir / "summary.json").exists()
    assert "interrupted" in (tmp_path / "trial.log").read_text()  # the loop's own SIGTERM handling ran


def test_an_interrupted_trial_with_a_checkpoint_continues_from_it(tiny_config: Path, tmp_path: Path) -> None:
    """A trial killed after its step-2 checkpoint: the rerun takes its folder over and resumes at step 2."""
    import tunelab

    out = tmp_path / "sweep"
    run_sweep(tiny_config, SPACE, trials=1, out=out, progress=False, enqueue=[{"train.lr": 3e-3}])
    study = optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{out / 'study.db'}")
    study.enqueue_trial({"train.lr": 2e-3})
    stale = study.ask()
    stale.suggest_float("train.lr", 1e-7, 1e-2, log=True)
    old = out / "trials" / f"trial-{stale.number:03d}"
    # what the killed trial left: a checkpoint at step 2, lines logged up to step 3, no weights or summary
    tunelab.train(tiny_config, ["train.lr=0.002", "train.max_steps=3", "train.save_every=2", f"output_dir={old}"],
                  progress=False)
    (old / "summary.json").unlink()
    shutil.rmtree(old / "model")
    before = [json.loads(x) for x in (old / "metrics.jsonl").read_text().splitlines()]

    again = run_sweep(tiny_config, SPACE, trials=2, out=out, progress=False)
    rerun = again.rows[-1]
    assert rerun["restart_of"] == stale.number and rerun["state"] == "COMPLETE"
    new = Path(rerun["run_dir"])
    assert not old.exists() and new.is_dir()  # the folder moved to the new trial's name
    lines = [json.loads(x) for x in (new / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in lines if "loss" in r]
    assert train_steps == [1, 2, 3, 4, 5, 6]  # no duplicate step 3: the resume trimmed it
    assert [r for r in lines if r["step"] <= 2] == [r for r in before if r["step"] <= 2]  # steps 1-2 kept as run
