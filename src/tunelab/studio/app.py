"""The studio's FastAPI app: a JSON API (documented at /docs and /openapi.json) and the page that uses it.

    from tunelab.studio.app import create_app
    from tunelab.studio.paths import Settings
    app = create_app(Settings(data_dir="studio"))   # then: uvicorn.run(app, host="127.0.0.1", port=7860)
"""

from __future__ import annotations

import json
import secrets
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from tunelab.config import ConfigError
from tunelab.data.io import DataError
from tunelab.studio import datasets, evals, forms, runs
from tunelab.studio.jobs import JobRunner, last_checkpoint
from tunelab.studio.paths import NotFound, Settings, StudioError, job_name
from tunelab.studio.store import JobStore
from tunelab.studio.upload import receive_upload

STATIC = Path(__file__).parent / "static"
# The upload endpoint reads the body itself (to enforce the size limit while receiving); this documents it.
UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"],
    "properties": {"file": {"type": "string", "format": "binary", "description": "JSON, JSONL, CSV or Parquet"}}}}}}}


class PrepareBody(BaseModel):
    op: str = Field(description="clean, dedup or split")
    options: dict[str, Any] = Field(default_factory=dict, description="clean: min_chars, max_chars; "
                                    "dedup: mode (exact|near|both), threshold; split: val, test, seed")


class ConfigBody(BaseModel):
    name: str = Field("run", description="Run name; the run folder is runs/<name>.")
    values: dict[str, Any] | None = Field(None, description="Flat form values {key.path: YAML text or bool}.")
    config: dict[str, Any] | None = Field(None, description="A nested config (as in YAML) instead of values.")


class EstimateBody(ConfigBody):
    device: str = Field("auto", description="Device kind for the time estimate: auto, cpu, cuda or h100.")


class ColumnsBody(BaseModel):
    columns: dict[str, str] = Field(description="Standard field -> the file's column, e.g. "
                                    "{\"instruction\": \"question\", \"output\": \"answer\"}; {} removes the mapping.")


class EvalBody(BaseModel):
    dataset: str | None = Field(None, description="A library file name; null = the run's own validation data.")
    metrics: list[str] = Field(list(evals.DEFAULT_METRICS), description="Generation metrics for `tunelab eval "
                               "--metrics` (exact_match, contains, bleu4, rouge, classification).")
    limit: int | None = Field(None, description="Evaluate only the first N records (null = all).")
    max_new_tokens: int = Field(64, description="Longest generated answer (1..1024).")


class ChatBody(BaseModel):
    run: str
    target: str = Field("run", description="run = the trained model, base = its base model (same template)")
    messages: list[dict[str, Any]]
    max_new_tokens: int = Field(64, gt=0, le=1024)
    temperature: float = Field(0.0, ge=0, le=2)


class ExportBody(BaseModel):
    format: str = Field(description="merged, gguf or ollama")
    name: str | None = Field(None, description="Output name under exports/ (default <run>-<format>).")
    quant: str | None = Field(None, description="gguf/ollama: f32, f16, bf16, q8_0, q4_0 ...")


def _errors(app: FastAPI) -> None:
    def handler(status: int):
        async def h(request: Request, exc: Exception) -> JSONResponse:
            return JSONResponse({"error": str(exc)}, status_code=status)
        return h

    app.add_exception_handler(datasets.TooLarge, handler(413))
    app.add_exception_handler(NotFound, handler(404))
    app.add_exception_handler(StudioError, handler(400))
    app.add_exception_handler(DataError, handler(400))

    async def config_error(request: Request, exc: ConfigError) -> JSONResponse:
        return JSONResponse({"error": str(exc), "problems": exc.problems, "fields": forms.problems_by_field(exc)},
                            status_code=422)

    app.add_exception_handler(ConfigError, config_error)


def _auth(app: FastAPI, token: str | None) -> None:
    """With a token: every request needs it (header `Authorization: Bearer T`, cookie, or ?token= once)."""
    if not token:
        return

    @app.middleware("http")
    async def check(request: Request, call_next):
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip() \
            or request.cookies.get("studio_token") or request.query_params.get("token") or ""
        if not secrets.compare_digest(given.encode(), token.encode()):
            return JSONResponse({"error": "missing or wrong token; open the studio with ?token=TOKEN"},
                                status_code=401)
        response = await call_next(request)
        if request.query_params.get("token"):
            response.set_cookie("studio_token", token, httponly=True, samesite="strict")
        return response


def create_app(settings: Settings, start_worker: bool = True) -> FastAPI:
    """Build the app over one data dir; `start_worker=False` leaves the job queue unwatched (tests drive it)."""
    store = JobStore(settings.db)
    runner = JobRunner(settings, store)
    cache = runs.ModelCache()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if start_worker:
            runner.start()
        else:
            runner.recover()
        yield
        runner.stop()

    # docs_url=None: FastAPI's Swagger page loads its scripts from a CDN; /docs serves a bundled page instead.
    app = FastAPI(title="tunelab studio", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Datasets, jobs, runs, chat and export over the same config and run folders as the "
                              "`tunelab` CLI.")
    app.state.settings, app.state.store, app.state.runner = settings, store, runner
    _errors(app)
    _auth(app, settings.auth_token)

    # ---- datasets ------------------------------------------------------------------------------
    @app.get("/api/datasets", tags=["datasets"])
    def list_datasets() -> list[dict]:
        """The dataset library."""
        return datasets.list_datasets(settings)

    @app.post("/api/datasets", tags=["datasets"], openapi_extra=UPLOAD_BODY)
    async def upload(request: Request) -> dict:
        """Upload a JSON/JSONL/CSV/Parquet file (multipart field `file`): parsed as it streams in, refused with
        413 once it passes the size limit (whatever Content-Length said), sanitized name, never overwrites."""
        path = await receive_upload(request, settings)
        return {"name": path.name, "path": str(path.relative_to(settings.data_dir))}

    @app.get("/api/datasets/{name}/inspect", tags=["datasets"])
    def inspect(name: str, model: str = "tiny-llama", max_length: int = 1024, columns: str | None = None) -> dict:
        """Format, counts, token-length histogram and a rendered example with trained spans.

        `columns` (JSON text `{"instruction": "question", ...}`) maps the file's columns to standard
        fields first; without it the mapping saved with the file is used (`{}` = none).
        """
        if model and forms._model_problem(model, settings):
            raise StudioError(f"model {model!r}: use an alias or a model under a model root")
        return datasets.inspect(settings, name, model, max_length, _columns_query(columns))

    @app.put("/api/datasets/{name}/columns", tags=["datasets"])
    def save_columns(name: str, body: ColumnsBody) -> dict:
        """Save the column mapping with a library file (checked against its columns); New jobs on it use it."""
        return {"name": name, "columns": datasets.save_columns(settings, name, body.columns) or {}}

    @app.post("/api/datasets/{name}/prepare", tags=["datasets"])
    def prepare(name: str, body: PrepareBody) -> dict:
        """clean, dedup or split a library file; the results are new library files."""
        return datasets.prepare(settings, name, body.op, body.options)

    @app.delete("/api/datasets/{name}", tags=["datasets"])
    def delete(name: str) -> dict:
        datasets.delete_dataset(settings, name)
        return {"deleted": name}

    def _columns_query(text: str | None) -> dict | None:
        if text is None:
            return None
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise StudioError(f"columns: not JSON ({e.msg}); send an object like "
                              '{"instruction": "question", "output": "answer"}') from None
        if not isinstance(value, dict):
            raise StudioError("columns: must be a JSON object {standard field: your column}")
        return value

    # ---- config form ---------------------------------------------------------------------------
    @app.get("/api/schema", tags=["config"])
    def schema() -> dict:
        """Form fields generated from the config schema, and the JSON schema of RunCfg."""
        from tunelab.config import RunCfg

        return {"fields": forms.form_fields(), "json_schema": RunCfg.model_json_schema()}

    @app.get("/api/models", tags=["config"])
    def models() -> list[dict]:
        """Base models: aliases, and HF folders / GGUF files under the model roots."""
        return runs.list_models(settings)

    def _config(body: ConfigBody, name: str) -> dict:
        data = body.config if body.config is not None else forms.config_from_form(body.values or {})
        data = dict(data)
        data["output_dir"] = f"runs/{name}"
        return data

    @app.post("/api/config/validate", tags=["config"])
    def validate(body: ConfigBody) -> dict:
        """Check a config like `tunelab train` does; returns the YAML and the command, or 422 with the problems."""
        name = job_name(body.name)
        data = _config(body, name)
        forms.check_config(data, settings)
        return {"yaml": forms.to_yaml(data), "cli": forms.cli_command(settings, f"{name}.yaml")}

    @app.post("/api/estimate", tags=["config"])
    def estimate(body: EstimateBody) -> dict:
        """Memory and time of a config before it starts (same body as validate; 422 with the same problems)."""
        from tunelab.estimate import EstimateError, estimate_run, format_estimate

        name = job_name(body.name)
        cfg = forms.check_config(_config(body, name), settings)
        n_samples = forms.count_train_samples(cfg, settings)
        try:
            est = estimate_run(cfg, n_samples, None, body.device)
        except EstimateError as e:
            raise StudioError(str(e)) from None
        return {**est, "text": format_estimate(est)}

    # ---- jobs ----------------------------------------------------------------------------------
    def _job_view(job: dict) -> dict:
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

    def _free_name(name: str) -> str:
        taken = {Path(j["run_dir"]).name for j in store.list()}
        out, n = name, 2
        while out in taken or (settings.runs / out).exists():
            out, n = f"{name}-{n}", n + 1
        return out

    @app.post("/api/jobs", tags=["jobs"])
    def create_job(body: ConfigBody) -> dict:
        """Validate and queue a job; the run folder is runs/<name> (a free name is picked if taken)."""
        name = _free_name(job_name(body.name))
        data = _config(body, name)
        forms.check_config(data, settings)
        job_id = store.add(name, forms.to_yaml(data), str(settings.runs / name))
        runner.job_dir(job_id).mkdir(parents=True, exist_ok=True)
        runner.config_path(job_id).write_text(forms.to_yaml(data), encoding="utf-8")
        return _job_view(store.get(job_id))

    @app.get("/api/jobs", tags=["jobs"])
    def list_jobs() -> list[dict]:
        return [_job_view(j) for j in store.list()]

    def _job(job_id: int) -> dict:
        job = store.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id}")
        return job

    @app.get("/api/jobs/{job_id}", tags=["jobs"])
    def get_job(job_id: int) -> dict:
        """A job with its log tail and metrics so far."""
        job = _job(job_id)
        view = _job_view(job)
        view["log"] = runner.log_tail(job_id)
        from tunelab.eval.report import read_metrics

        run_dir = Path(job["run_dir"])
        if job["kind"] == "eval":
            view["metrics"] = []
            result = (job["message"] or "").removeprefix("done: eval/") if job["status"] == "completed" else ""
            view["eval"] = evals.read_eval(run_dir / "eval" / result) \
                if result.endswith(".json") and (run_dir / "eval" / result).is_file() else None
        else:
            view["metrics"] = read_metrics(run_dir) if run_dir.is_dir() else []
        return view

    @app.post("/api/jobs/{job_id}/cancel", tags=["jobs"])
    def cancel(job_id: int) -> dict:
        """Queued: dropped. Running: SIGINT, the run saves a checkpoint and stops (resumable)."""
        return _job_view(runner.cancel(job_id))

    @app.post("/api/jobs/{job_id}/resume", tags=["jobs"])
    def resume(job_id: int) -> dict:
        """Queue a stopped job again with train.resume=auto."""
        return _job_view(runner.resume(job_id))

    # ---- runs ----------------------------------------------------------------------------------
    @app.get("/api/runs", tags=["runs"])
    def list_run_rows() -> list[dict]:
        return runs.list_run_rows(settings)

    @app.get("/api/runs/{name}/metrics", tags=["runs"])
    def run_metrics(name: str) -> dict:
        return {"name": name, "metrics": runs.metrics(settings, name)}

    @app.get("/api/runs/compare", tags=["runs"])
    def compare_runs(a: str, b: str) -> dict:
        """Two runs' latest eval results side by side, for every dataset both were evaluated on (diff = b - a)."""
        return evals.compare_evals(runs.run_path(settings, a), runs.run_path(settings, b))

    @app.get("/api/runs/{name}/evals", tags=["runs"])
    def run_evals(name: str) -> list[dict]:
        """Every RUN/eval/*.json: dataset, n, metrics, and per metric the base value and delta when compared."""
        return evals.run_evals(runs.run_path(settings, name))

    @app.post("/api/runs/{name}/eval", tags=["runs"])
    def eval_against_base(name: str, body: EvalBody) -> dict:
        """Queue `tunelab eval RUN --data ... --compare base` as a job (watch it at /api/jobs/{id})."""
        run_dir = runs.run_path(settings, name)
        evals.require_weights(run_dir)
        evals.check_options(body.metrics, body.limit, body.max_new_tokens)
        stage, data = evals.stage_data(settings, run_dir, body.dataset)
        job_id = runner.submit_eval(f"eval {name}", run_dir, stage, data, lambda rel: evals.make_spec(
            run_dir, rel, body.metrics, body.limit, body.max_new_tokens, body.dataset))
        return _job_view(store.get(job_id))

    @app.get("/api/runs/{name}/report", tags=["runs"])
    def run_report(name: str) -> FileResponse:
        """The run's HTML report (written fresh)."""
        return FileResponse(runs.report(settings, name), media_type="text/html")

    @app.post("/api/runs/{name}/export", tags=["runs"])
    def run_export(name: str, body: ExportBody) -> dict:
        """Export merged / GGUF / Ollama to exports/ under the data dir."""
        path = runs.export_run(settings, name, body.format, body.name, body.quant)
        return {"path": str(path.relative_to(settings.data_dir))}

    @app.post("/api/chat", tags=["playground"])
    def chat(body: ChatBody) -> StreamingResponse:
        """Stream an answer as server-sent events: `data: {"text": piece}` ... `data: {"done": true}`."""
        runs.run_path(settings, body.run)  # 404 before the stream starts

        def events():
            try:
                for piece in runs.chat_stream(cache, settings, body.run, body.target, body.messages,
                                              body.max_new_tokens, body.temperature):
                    yield f"data: {json.dumps({'text': piece})}\n\n"
                yield f"data: {json.dumps({'done': True})}\n\n"
            except Exception as e:  # noqa: BLE001 - the stream has started: report the error inside it
                yield f"data: {json.dumps({'error': str(e)})}\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.get("/api/info", tags=["studio"])
    def info() -> dict:
        return {"data_dir": str(settings.data_dir), "model_roots": [str(p) for p in settings.model_roots],
                "slots": settings.slots, "max_upload_mb": settings.max_upload_mb}

    @app.get("/docs", include_in_schema=False)
    def api_docs() -> FileResponse:
        """The API reference, rendered from /openapi.json by a bundled page (works offline)."""
        return FileResponse(STATIC / "api.html")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
