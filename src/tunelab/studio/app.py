"""The studio's FastAPI app: a JSON API (documented at /docs and /openapi.json) and the page that uses it.

create_app only assembles: the routes are in tunelab.studio.routes (one router per screen), the error
handlers and the token check are here.

    from tunelab.studio.app import create_app
    from tunelab.studio.paths import Settings
    app = create_app(Settings(data_dir="studio"))   # then: uvicorn.run(app, host="127.0.0.1", port=7860)
"""

from __future__ import annotations

import secrets
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from tunelab.config import ConfigError
from tunelab.data.io import DataError
from tunelab.studio import datasets, forms
from tunelab.studio.jobs import JobRunner
from tunelab.studio.paths import NotFound, Settings, StudioError
from tunelab.studio.routes import ROUTERS
from tunelab.studio.routes.pages import STATIC
from tunelab.studio.runs import ModelCache
from tunelab.studio.store import JobStore


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

    async def request_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        """A body or parameter of the wrong shape: 422 with one `error` line the page shows (like every other
        error here) and FastAPI's `detail` list, without the `input` echo (a huge value is never sent back)."""
        errors = exc.errors()
        detail = [{k: e[k] for k in ("loc", "msg", "type") if k in e} for e in errors]
        first = detail[0] if detail else {"loc": (), "msg": "invalid request"}
        where = ".".join(map(str, first["loc"][1:])) or "body"  # loc: ("body" | "query" | "path", field, ...)
        msg = first["msg"]
        if first.get("type") == "json_invalid":  # loc: ("body", character position)
            where, msg = "body", f"not valid JSON (at character {first['loc'][-1]}); send a JSON object"
        more = f" (and {len(detail) - 1} more problems)" if len(detail) > 1 else ""
        return JSONResponse({"error": f"{where}: {msg}{more}", "detail": detail}, status_code=422)

    app.add_exception_handler(RequestValidationError, request_error)


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


def _resolve_lazy_imports() -> None:
    """Resolve transformers' lazily imported classes once, before requests run in the thread pool.

    transformers resolves `from transformers import AutoTokenizer` on first use, and two threads doing
    that at once can fail with ImportError; the New-job page inspects a dataset (tokenizer), reads model
    facts and estimates (model skeletons) at the same time, so the names are resolved here first.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: F401


def create_app(settings: Settings, start_worker: bool = True) -> FastAPI:
    """Build the app over one data dir; `start_worker=False` leaves the job queue unwatched (tests drive it).

    The routes live in tunelab.studio.routes, one router per screen; what they share (settings, job
    store, runner, model cache) is put on `app.state` here and reaches them as dependencies.
    """
    store = JobStore(settings.db)
    runner = JobRunner(settings, store)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        _resolve_lazy_imports()
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
    app.state.cache = ModelCache()
    _errors(app)
    _auth(app, settings.auth_token)
    for router in ROUTERS:
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
