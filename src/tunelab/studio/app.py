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
from typing import Annotated, Any

from fastapi import FastAPI, File, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from tunelab.config import ConfigError
from tunelab.data.io import DataError
from tunelab.studio import datasets, forms, runs
from tunelab.studio.jobs import JobRunner, last_checkpoint
from tunelab.studio.paths import NotFound, Settings, StudioError, job_name
from tunelab.studio.store import JobStore

STATIC = Path(__file__).parent / "static"


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

    @app.post("/api/datasets", tags=["datasets"])
    def upload(request: Request, file: Annotated[UploadFile, File()]) -> dict:
        """Upload a JSON/JSONL/CSV/Parquet file (size-limited, streamed to disk, sanitized name)."""
        length = int(request.headers.get("content-length") or 0)
        if length > settings.max_upload_bytes + 65536:
            raise datasets.TooLarge(f"{file.filename}: larger than the upload limit of {settings.max_upload_mb:g} MB")
        path = datasets.save_upload(settings, file.filename or "", file.file)
        return {"name": path.name, "path": str(path.relative_to(settings.data_dir))}

    @app.get("/api/datasets/{name}/inspect", tags=["datasets"])
    def inspect(name: str, model: str = "tiny-llama", max_length: int = 1024) -> dict:
        """Format, counts, token-length histogram and a rendered example with trained spans."""
        if model and forms._model_problem(model, settings):
            raise StudioError(f"model {model!r}: use an alias or a model under a model root")
        return datasets.inspect(settings, name, model, max_length)

    @app.post("/api/datasets/{name}/prepare", tags=["datasets"])
    def prepare(name: str, body: PrepareBody) -> dict:
        """clean, dedup or split a library file; the results are new library files."""
        return datasets.prepare(settings, name, body.op, body.options)

    @app.delete("/api/datasets/{name}", tags=["datasets"])
    def delete(name: str) -> dict:
        datasets.delete_dataset(settings, name)
        return {"deleted": name}

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
        view["config"] = yaml.safe_load(job["config_yaml"])
        view["run"] = Path(job["run_dir"]).name
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

        view["metrics"] = read_metrics(job["run_dir"]) if Path(job["run_dir"]).is_dir() else []
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
