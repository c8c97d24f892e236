"""Runs screen: the run list, each run's metrics and eval tables, run-vs-run comparison, eval against the
base model (queued as a job), and the HTML report."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from tunelab.studio import evals, runs, watch
from tunelab.studio.routes.deps import RunnerDep, SettingsDep, StoreDep
from tunelab.studio.routes.jobs import job_view

router = APIRouter(tags=["runs"])


class EvalBody(BaseModel):
    dataset: str | None = Field(None, description="A library file name; null = the run's own validation data.")
    metrics: list[str] = Field(list(evals.DEFAULT_METRICS), description="Generation metrics for `tunelab eval "
                               "--metrics` (exact_match, contains, bleu4, rouge, classification).")
    limit: int | None = Field(None, description="Evaluate only the first N records (null = all).")
    max_new_tokens: int = Field(64, description="Longest generated answer (1..1024).")


@router.get("/api/runs")
def list_run_rows(settings: SettingsDep) -> list[dict]:
    return runs.list_run_rows(settings)


@router.get("/api/runs/{name}/metrics")
def run_metrics(name: str, settings: SettingsDep) -> dict:
    return {"name": name, "metrics": runs.metrics(settings, name)}


@router.get("/api/runs/compare")
def compare_runs(a: str, b: str, settings: SettingsDep) -> dict:
    """Two runs' latest eval results side by side, for every dataset both were evaluated on (diff = b - a)."""
    return evals.compare_evals(runs.run_path(settings, a), runs.run_path(settings, b))


@router.get("/api/runs/{name}/evals")
def run_evals(name: str, settings: SettingsDep) -> list[dict]:
    """Every RUN/eval/*.json: dataset, n, metrics, and per metric the base value and delta when compared."""
    return evals.run_evals(runs.run_path(settings, name))


@router.get("/api/runs/{name}/evidence")
def run_evidence(name: str, settings: SettingsDep) -> dict:
    """The newest evaluation against the base (metrics with deltas) and a few answers side by side."""
    return watch.evidence(runs.run_path(settings, name))


@router.post("/api/runs/{name}/eval")
def eval_against_base(name: str, body: EvalBody, settings: SettingsDep, store: StoreDep,
                      runner: RunnerDep) -> dict:
    """Queue `tunelab eval RUN --data ... --compare base` as a job (watch it at /api/jobs/{id})."""
    run_dir = runs.run_path(settings, name)
    evals.require_weights(run_dir)
    evals.check_options(body.metrics, body.limit, body.max_new_tokens)
    stage, data = evals.stage_data(settings, run_dir, body.dataset)
    job_id = runner.submit_eval(f"eval {name}", run_dir, stage, data, lambda rel: evals.make_spec(
        run_dir, rel, body.metrics, body.limit, body.max_new_tokens, body.dataset))
    return job_view(settings, store.get(job_id))


@router.get("/api/runs/{name}/report")
def run_report(name: str, settings: SettingsDep) -> FileResponse:
    """The run's HTML report (written fresh)."""
    return FileResponse(runs.report(settings, name), media_type="text/html")
