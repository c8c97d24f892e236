"""Jobs screen: queue a training job, list and watch jobs (log tail, metrics, eval result), cancel, resume.

`job_view` is the one JSON shape of a job; the runs router returns it for the eval jobs it queues.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter

from tunelab.studio import evals, forms, watch
from tunelab.studio.jobs import last_checkpoint
from tunelab.studio.paths import NotFound, Settings, job_name
from tunelab.studio.routes.config import ConfigBody, config_data
from tunelab.studio.routes.deps import RunnerDep, SettingsDep, StoreDep
from tunelab.studio.store import JobStore

router = APIRouter(tags=["jobs"])


def job_view(settings: Settings, job: dict) -> dict:
    """A job row as the API shows it: its config parsed, the run name, the reproducing command, the checkpoint."""
    import yaml

    view = {k: v for k, v in job.items() if k != "config_yaml"}
    view["yaml"] = job["config_yaml"]
    view["config"] = yaml.safe_load(job["config_yaml"]) or {}
    view["run"] = Path(job["run_dir"]).name
    if job["kind"] == "eval":
        view["cli"] = evals.cli_command(settings, view["config"])
        view["checkpoint"] = None
    else:
        view["cli"] = forms.cli_command(settings, f"jobs/{job['id']}/config.yaml")
        view["checkpoint"] = job["checkpoint"] or last_checkpoint(Path(job["run_dir"]))
    return view


def _free_name(settings: Settings, store: JobStore, name: str) -> str:
    """`name`, or `name-2`, `name-3`... when a job or a run folder already uses it."""
    taken = {Path(j["run_dir"]).name for j in store.list()}
    out, n = name, 2
    while out in taken or (settings.runs / out).exists():
        out, n = f"{name}-{n}", n + 1
    return out


def _job(store: JobStore, job_id: int) -> dict:
    job = store.get(job_id)
    if job is None:
        raise NotFound(f"no job {job_id}")
    return job


@router.post("/api/jobs")
def create_job(body: ConfigBody, settings: SettingsDep, store: StoreDep, runner: RunnerDep) -> dict:
    """Validate and queue a job; the run folder is runs/<name> (a free name is picked if taken)."""
    name = _free_name(settings, store, job_name(body.name))
    data = config_data(body, name)
    forms.check_config(data, settings)
    job_id = store.add(name, forms.to_yaml(data), str(settings.runs / name))
    runner.job_dir(job_id).mkdir(parents=True, exist_ok=True)
    runner.config_path(job_id).write_text(forms.to_yaml(data), encoding="utf-8")
    return job_view(settings, store.get(job_id))


@router.get("/api/jobs")
def list_jobs(settings: SettingsDep, store: StoreDep) -> list[dict]:
    return [job_view(settings, j) for j in store.list()]


@router.get("/api/jobs/{job_id}")
def get_job(job_id: int, settings: SettingsDep, store: StoreDep, runner: RunnerDep) -> dict:
    """A job with its log tail and metrics so far; `progress` (step, ETA, tokens/s, memory, fast paths, phase)
    and, for training, `overfitting` (the first mark, or null)."""
    job = _job(store, job_id)
    view = job_view(settings, job)
    view["log"] = runner.log_tail(job_id)
    from tunelab.eval.report import read_metrics

    run_dir = Path(job["run_dir"])
    if job["kind"] == "eval":
        view["metrics"] = []
        result = (job["message"] or "").removeprefix("done: eval/") if job["status"] == "completed" else ""
        view["eval"] = evals.read_eval(run_dir / "eval" / result) \
            if result.endswith(".json") and (run_dir / "eval" / result).is_file() else None
        view["progress"] = watch.eval_progress(view["log"], job["status"])
    else:
        view["metrics"] = read_metrics(run_dir) if run_dir.is_dir() else []
        view["progress"] = watch.train_progress(view["log"], view["metrics"], job["status"])
        view["overfitting"] = watch.overfitting(view["metrics"])
    return view


@router.post("/api/jobs/{job_id}/cancel")
def cancel(job_id: int, settings: SettingsDep, runner: RunnerDep) -> dict:
    """Queued: dropped. Running: SIGINT, the run saves a checkpoint and stops (resumable)."""
    return job_view(settings, runner.cancel(job_id))


@router.post("/api/jobs/{job_id}/resume")
def resume(job_id: int, settings: SettingsDep, runner: RunnerDep) -> dict:
    """Queue a stopped job again with train.resume=auto."""
    return job_view(settings, runner.resume(job_id))
