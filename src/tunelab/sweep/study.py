"""Hyperparameter search over a run config with Optuna: TPE sampling, median pruning on the eval curve.

A sweep is a folder, like a run::

    SWEEP/
      study.db          the Optuna study (SQLite): what makes the sweep resumable after an interruption
      sweep.json        what was asked (config, space, metric, direction): a resumed sweep must ask the same
      trials/trial-NNN/ one normal run folder per trial (train with the sampled values as overrides)
      logs/trial-NNN.log   each trial's console output when trials run as subprocesses (--nproc > 1)
      results.csv, results.json, report.html, objective.png, importance.png, best.json

Each trial is ``tunelab train CONFIG <sampled key=value> output_dir=SWEEP/trials/trial-NNN``. Every eval line
the trial logs reports the metric to Optuna (``trial.report(value, step)``); Optuna's MedianPruner stops a
trial whose value at a step is worse than the median of earlier trials at that step. A single-process sweep
runs trials in this process and watches them through a tracker (`tunelab.tracking.extra_trackers`) that
raises ``optuna.TrialPruned``; with ``nproc > 1`` each trial is ``tunelab train --nproc N`` in a subprocess
whose metrics.jsonl is followed, and a pruned trial gets SIGTERM (the loop saves and exits).

Restarting the same command continues the study: finished trials are kept; a trial that was running when the
sweep stopped is run again with the same values, from its last checkpoint when it saved one
(``train.save_every``), else from the start.
"""

from __future__ import annotations

import gc
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.config import ConfigError, load_config
from tunelab.data.io import DataError
from tunelab.engine.checkpoint import list_checkpoints
from tunelab.runfolder import RunFolder
from tunelab.sweep.space import Param, as_overrides, check_space, load_space, parse_space, suggest
from tunelab.utils.io import atomic_write_json

STUDY_NAME = "tunelab-sweep"
MAX_FAILURES_IN_A_ROW = 3
"""Consecutive failed trials after which the sweep stops (a broken setup, not an unlucky sample)."""


class SweepError(ValueError):
    """A sweep that cannot start or continue as asked; the message says what to change."""


def default_direction(metric: str) -> str:
    """minimize for losses and perplexities, maximize for everything else (accuracy, F1, AUC...)."""
    return "minimize" if ("loss" in metric or "ppl" in metric) else "maximize"


def objective_of(run_dir: Path, metric: str) -> float:
    """A finished trial's objective: `metric` from summary.json, else its last value in the eval lines."""
    folder = RunFolder(run_dir)
    summary = folder.read_summary() or {}
    value = summary.get(metric)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    rows = [r for r in folder.read_metrics() if isinstance(r.get(metric), (int, float))]
    if rows:
        return float(rows[-1][metric])
    known = sorted({k for r in folder.read_metrics() for k in r if k.startswith("eval_")} |
                   {k for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    raise SweepError(f"--metric {metric}: trial {run_dir.name} logged no such value; available: {', '.join(known)} "
                     "(an eval metric needs a validation set: data.eval or data.val_size)")


class CurveWatch:
    """Reports each eval-line value of the metric to the Optuna trial and says when to stop (pruning).

    Used as a tracker in-process (``log`` raises TrialPruned) and on lines read from a subprocess's
    metrics.jsonl (``observe`` returns True).
    """

    def __init__(self, trial, metric: str, prune: bool):
        self.trial, self.metric, self.prune = trial, metric, prune
        self.curve: list[tuple[int, float]] = []
        self.pruned_at: int | None = None

    def observe(self, line: dict) -> bool:
        value, step = line.get(self.metric), line.get("step")
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not isinstance(step, int):
            return False
        if not math.isfinite(value) or any(s == step for s, _ in self.curve):
            return False
        self.curve.append((step, float(value)))
        self.trial.report(float(value), step)
        if self.prune and self.trial.should_prune():
            self.pruned_at = step
            return True
        return False

    # the Tracker interface (tunelab.tracking): in-process trials
    def start(self, run_dir: Path, config: dict) -> None:
        pass

    def log(self, metrics: dict, step: int) -> None:
        import optuna

        if self.observe({"step": step, **metrics}):
            raise optuna.TrialPruned(f"{self.metric} {metrics[self.metric]:.4g} at step {step} is worse than the "
                                     "median of earlier trials")

    def finish(self) -> None:
        pass


@dataclass
class SweepResult:
    """What a sweep holds: its folder, one row per trial, and the best finished trial."""

    path: Path
    rows: list[dict] = field(default_factory=list)
    best: dict | None = None

    @property
    def best_run(self):
        """The best trial's run folder as a `tunelab.run.Run` (a normal run: chat, eval, export, serve)."""
        from tunelab.run import Run

        if self.best is None:
            raise SweepError(f"{self.path}: no trial has finished yet")
        return Run(self.best["run_dir"])


def _settings(config: Path, space: dict[str, Param], metric: str, direction: str, overrides: list[str]) -> dict:
    return {"config": str(config.resolve()), "space": {k: p.as_dict() for k, p in space.items()},
            "metric": metric, "direction": direction, "overrides": list(overrides)}


def _open_study(folder: Path, settings: dict, seed: int, startup_trials: int, prune_warmup: int):
    """Create the study in SWEEP/study.db, or load it when the same sweep was started before."""
    import optuna

    folder.mkdir(parents=True, exist_ok=True)
    saved_path = folder / "sweep.json"
    if saved_path.is_file():
        saved = json.loads(saved_path.read_text(encoding="utf-8"))
        changed = [k for k in settings if saved.get(k) != settings[k]]
        if changed:
            raise SweepError(f"{folder}: holds a sweep with different {', '.join(changed)} "
                             f"(was {', '.join(repr(saved.get(k)) for k in changed)}); continue it with the same "
                             "arguments, or give another --out folder")
    else:
        atomic_write_json(saved_path, settings)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=prune_warmup)
    storage = f"sqlite:///{(folder / 'study.db').resolve()}"
    return optuna.create_study(study_name=STUDY_NAME, storage=storage, direction=settings["direction"],
                               sampler=sampler, pruner=pruner, load_if_exists=True)


def _restart_interrupted(study, folder: Path) -> int:
    """Trials left RUNNING by a sweep that stopped: mark them failed and queue their values again."""
    import optuna
    from optuna.trial import TrialState

    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(t.number, state=TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"restart_of": t.number}, skip_if_exists=False)
        optuna.logging.get_logger("optuna").debug("requeued trial %d", t.number)
        n += 1
    return n


def _done(study) -> int:
    """Trials that count towards --trials: complete, pruned, or failed on their own (not interrupted ones)."""
    from optuna.trial import TrialState

    requeued = {t.user_attrs.get("restart_of") for t in study.get_trials(deepcopy=False)}
    return sum(1 for t in study.get_trials(deepcopy=False)
               if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
               or (t.state == TrialState.FAIL and t.number not in requeued))


def _trial_dir(folder: Path, number: int) -> Path:
    return folder / "trials" / f"trial-{number:03d}"


def _take_over(folder: Path, trial, run_dir: Path) -> bool:
    """A requeued trial continues its predecessor's folder when that saved a checkpoint; True if it resumes."""
    before = trial.user_attrs.get("restart_of")
    if before is None:
        return False
    old = _trial_dir(folder, before)
    if not old.is_dir():
        return False
    if not list_checkpoints(old):  # nothing to continue from: start over clean
        shutil.rmtree(old)
        return False
    old.rename(run_dir)
    return True


def _replay(watch: CurveWatch, run_dir: Path) -> None:
    """Report the eval values a resumed trial logged before its checkpoint, so pruning sees the whole curve."""
    last = max(int(p.name.rsplit("-", 1)[-1]) for p in list_checkpoints(run_dir))
    for row in RunFolder(run_dir).read_metrics():
        if isinstance(row.get("step"), int) and row["step"] <= last:
            watch.observe(row)


def _run_in_process(config: Path, overrides: list[str], watch: CurveWatch, progress: bool) -> None:
    from tunelab.api import train
    from tunelab.tracking import extra_trackers

    with extra_trackers(watch):
        train(config, overrides, progress=progress)


def _run_subprocess(config: Path, overrides: list[str], watch: CurveWatch, run_dir: Path, log_path: Path,
                    nproc: int, poll_s: float = 0.5) -> None:
    """`tunelab train [--nproc N]` in its own process group, following its metrics.jsonl for pruning."""
    import optuna

    from tunelab.engine.launch import child_env

    cmd = [sys.executable, "-m", "tunelab", "train", str(config), *overrides, "--quiet", "--nproc", str(nproc)]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    metrics, offset, pruned = run_dir / "metrics.jsonl", 0, False
    with open(log_path, "ab") as log:
        child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=child_env(), start_new_session=True)
        try:
            while True:
                code = child.poll()
                if metrics.is_file() and not pruned:
                    with open(metrics, encoding="utf-8") as f:
                        f.seek(offset)
                        chunk = f.read()
                    lines = chunk.split("\n")[:-1]  # only whole lines; a partial one is read next time
                    offset += sum(len(x.encode("utf-8")) + 1 for x in lines)
                    for text in lines:
                        if text.strip() and watch.observe(json.loads(text)):
                            pruned = True
                            os.killpg(child.pid, signal.SIGTERM)  # every rank saves a checkpoint and exits
                            break
                if code is not None:
                    break
                time.sleep(poll_s)
        except BaseException:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGTERM)
                child.wait()
            raise
    if pruned:
        raise optuna.TrialPruned(f"{watch.metric} at step {watch.pruned_at} is worse than the median of earlier trials")
    if code != 0:
        tail = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"tunelab train exited with {code}: {' | '.join(tail)} (full log: {log_path})")


def run_sweep(config: str | Path, space: str | Path | dict, trials: int = 10, metric: str = "eval_loss",
              direction: str | None = None, out: str | Path | None = None, overrides: list[str] | None = None,
              nproc: int = 1, prune: bool = True, startup_trials: int = 5, prune_warmup: int = 0, seed: int = 0,
              enqueue: list[dict[str, Any]] | None = None, progress: bool = True,
              say: Callable[[str], None] | None = None) -> SweepResult:
    """Search `space` for the config values that optimize `metric`, `trials` trials in all (resumable).

    `config`: the base run config (YAML); `overrides`: ``key=value`` applied to every trial. `space`: a
    space.yaml path or its dict form (`tunelab.sweep.space`). `metric`: a key of the trials' eval lines
    (eval_loss, eval_accuracy, ...) or of their summary.json (accuracy, f1_macro, ...); only an eval-line metric
    can prune. `direction`: minimize / maximize (default: minimize for losses and perplexities). `out`: the
    sweep folder (default sweeps/<config name>). `startup_trials`: random trials before TPE takes over, and
    finished trials before pruning starts; `prune_warmup`: steps before a trial can be pruned. `enqueue`: value
    sets to try first (e.g. known good settings). Returns the table of trials and the best one.
    """
    import optuna
    from optuna.trial import TrialState

    from tunelab.sweep.report import trial_rows, write_report

    say = say or (lambda message: None)
    config = Path(config)
    if trials < 1:
        raise SweepError(f"--trials: must be at least 1 (got {trials})")
    if nproc < 1:
        raise SweepError(f"--nproc: must be at least 1 (got {nproc})")
    overrides = list(overrides or [])
    base_cfg = load_config(config, overrides)  # the base config itself must be valid
    where = str(space) if not isinstance(space, dict) else "space"
    space = load_space(space) if not isinstance(space, dict) else parse_space(space)
    check_space(space, base_cfg.model_dump(mode="json"), where)
    direction = direction or default_direction(metric)
    if direction not in ("minimize", "maximize"):
        raise SweepError(f"--direction: minimize or maximize (got {direction!r})")
    folder = Path(out) if out is not None else Path("sweeps") / config.stem
    study = _open_study(folder, _settings(config, space, metric, direction, overrides), seed, startup_trials,
                        prune_warmup)
    if requeued := _restart_interrupted(study, folder):
        say(f"{requeued} trial(s) interrupted last time will run again")
    if enqueue and not study.get_trials(deepcopy=False):  # only when the study is new
        for params in enqueue:
            study.enqueue_trial(params)
    failures = 0
    while _done(study) < trials:
        trial = study.ask()
        params = suggest(trial, space)
        run_dir = _trial_dir(folder, trial.number)
        resumed = _take_over(folder, trial, run_dir)
        trial.set_user_attr("run_dir", str(run_dir))
        args = [*overrides, *as_overrides(params), f"output_dir={json.dumps(str(run_dir))}",
                *(["train.resume=auto"] if resumed else [])]
        watch = CurveWatch(trial, metric, prune)
        if resumed:
            _replay(watch, run_dir)
        say(f"trial {trial.number} ({_done(study) + 1}/{trials}): " +
            ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()) +
            (" (resumed)" if resumed else ""))
        started = time.time()
        try:
            if nproc > 1:
                _run_subprocess(config, args, watch, run_dir, folder / "logs" / f"{run_dir.name}.log", nproc)
            else:
                _run_in_process(config, args, watch, progress)
            value = objective_of(run_dir, metric)
        except optuna.TrialPruned as e:
            trial.set_user_attr("seconds", round(time.time() - started, 2))
            trial.set_user_attr("pruned_at_step", watch.pruned_at)
            study.tell(trial, state=TrialState.PRUNED)
            shutil.rmtree(RunFolder(run_dir).checkpoints_dir, ignore_errors=True)  # a pruned trial is not continued
            say(f"  pruned: {e}")
            failures = 0
            continue
        except (SweepError, ConfigError, DataError):  # the setup is wrong, not this trial's values
            study.tell(trial, state=TrialState.FAIL)
            raise
        except Exception as e:  # noqa: BLE001 - a trial's own failure (divergence, OOM) is a result, not a crash
            trial.set_user_attr("error", f"{type(e).__name__}: {e}"[:500])
            study.tell(trial, state=TrialState.FAIL)
            failures += 1
            say(f"  failed: {type(e).__name__}: {e}")
            if failures >= MAX_FAILURES_IN_A_ROW:
                write_report(folder, study, space, metric)
                raise SweepError(f"{failures} trials in a row failed, the last with {type(e).__name__}: {e}; "
                                 f"fix the config or the space (see {folder}/report.html)") from e
            continue
        finally:
            gc.collect()
        trial.set_user_attr("seconds", round(time.time() - started, 2))
        study.tell(trial, value)
        failures = 0
        say(f"  {metric} = {value:.4g}")
        write_report(folder, study, space, metric)  # after every trial: an interrupted sweep keeps its table
    write_report(folder, study, space, metric)
    rows = trial_rows(study, space)
    done = [r for r in rows if r["state"] == "COMPLETE"]
    best = None
    if done:
        best = (min if direction == "minimize" else max)(done, key=lambda r: r["value"])
    return SweepResult(folder, rows, best)
