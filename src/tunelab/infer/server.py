"""OpenAI-compatible HTTP server: `create_app(specs)` returns a FastAPI app.

Endpoints follow OpenAI's shapes, so the official `openai` client works unchanged:
`POST /v1/chat/completions` and `POST /v1/completions` (with `stream: true` as server-sent
events), `GET /v1/models`, plus `GET /health` and `GET /metrics` (Prometheus text).

Safe by default: the CLI binds 127.0.0.1; with an API key every endpoint but /health needs
`Authorization: Bearer <key>`; the body size, `max_tokens` and the number of requests in
flight are capped; every error, malformed JSON included, is a 4xx/5xx in OpenAI's error JSON
(`{"error": {"message", "type", "param", "code"}}`), never a crash.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunelab.infer.ab import ABRouter, Route
from tunelab.infer.drift import DriftMonitor, DriftProfile, DriftReport
from tunelab.infer.model_pool import (
    Batcher,
    Delta,
    Finish,
    GenJob,
    ModelPool,
    ModelSpec,
    Sampling,
    ServedModel,
    SpecError,
)
from tunelab.infer.stats import ServeStats
from tunelab.utils.userfiles import UserFileError, check_value

log = logging.getLogger("tunelab.serve")
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # OpenAI's `seed` is an int64; torch.manual_seed overflows past 2^64
GREEDY_BELOW = 1e-5  # temperatures this small overflow logits / temperature; they mean greedy anyway
_ENDPOINTS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}


@dataclass(frozen=True)
class ServeLimits:
    """Caps that turn abuse into clear 4xx errors instead of memory or CPU exhaustion."""

    max_body_bytes: int = 1_000_000  # larger request bodies get 413
    max_tokens: int = 1024  # a request asking for more completion tokens gets 400
    default_max_tokens: int = 256  # chat without max_tokens (completions: 16, like OpenAI); capped by max_tokens
    max_concurrency: int = 64  # requests in flight (queued or generating) beyond this get 429
    max_batch_size: int = 8  # requests generated together
    batch_wait_ms: float = 5.0  # how long the batcher waits for more requests to join a batch
    max_image_bytes: int = 5_000_000  # a decoded image_url part larger than this gets 400 (vision models)


@dataclass(frozen=True)
class DriftSettings:
    """How live prompts are compared with a training profile (see tunelab.infer.drift)."""

    threshold: float = 0.25  # score above which a warning is logged
    window: int = 200  # recent prompts compared
    min_requests: int = 20  # no score before this many prompts (small samples are noisy)
    every: int = 10  # rescore every this many prompts


class APIError(Exception):
    """An error answered in OpenAI's JSON shape."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(body, status_code=self.status, headers=headers)


# ----------------------------------------------------------------------------- request bodies


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields we do not use (logprobs=None, ...)

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=1, description="only one choice per request is supported")
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    stop: str | list[str] | None = None
    user: str | None = None
    seed: int | None = Field(None, ge=INT64_MIN, le=INT64_MAX, description="an int64, as in OpenAI's API")

    @field_validator("temperature")
    @classmethod
    def _tiny_temperature_is_greedy(cls, value: float) -> float:
        """A temperature like 1e-300 would turn logits into inf and crash sampling; it means greedy."""
        return 0.0 if value < GREEDY_BELOW else value


class _TextPart(BaseModel):
    type: Literal["text"]
    text: str


class _ImagePart(BaseModel):
    """An OpenAI image content part; only base64 data URLs are accepted (tunelab.infer.vision.image_from_url)."""

    type: Literal["image_url"]
    image_url: dict[str, Any]


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[_TextPart | _ImagePart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content if isinstance(p, _TextPart))
        return self.content or ""

    def has_images(self) -> bool:
        return isinstance(self.content, list) and any(isinstance(p, _ImagePart) for p in self.content)


class ChatBody(_Body):
    """POST /v1/chat/completions."""

    messages: list[_Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionBody(_Body):
    """POST /v1/completions (one prompt per request)."""

    prompt: str | list[str]

    @field_validator("prompt")
    @classmethod
    def _not_empty(cls, value: str | list[str]) -> str | list[str]:
        if value in ("", []) or (isinstance(value, list) and "" in value):
            raise ValueError("must not be empty; send the text the model should continue")
        return value


# ----------------------------------------------------------------------------- app


@dataclass
class _State:
    pool: ModelPool
    batcher: Batcher
    router: ABRouter
    stats: ServeStats
    limits: ServeLimits
    api_key: str | None
    monitors: dict[str, DriftMonitor]
    in_flight: int = 0


def create_app(specs: Sequence[ModelSpec], *, api_key: str | None = None, limits: ServeLimits = ServeLimits(),
               routes: Mapping[str, str | Route] | None = None, ab_log: str | Path | None = None,
               drift_profiles: Mapping[str, DriftProfile] | None = None, drift: DriftSettings = DriftSettings(),
               device: str = "cpu", dtype: str = "auto", pool: ModelPool | None = None) -> FastAPI:
    """Load the models of `specs` (one copy per base model) and return the OpenAI-compatible app.

    `routes` maps virtual model names to weighted variants (`{"chat": "runA=90,runB=10"}`),
    `ab_log` is the JSONL file routed requests are logged to, `drift_profiles` maps served model
    names to training profiles to monitor (scored as `drift` says). Raises SpecError / RouteError for bad arguments.
    """
    pool = pool or ModelPool(specs, device=device, dtype=dtype)
    stats = ServeStats()
    router = ABRouter(routes or {}, pool.names(), ab_log)
    monitors = {}
    for name, profile in (drift_profiles or {}).items():
        if name not in pool.models:
            raise SpecError(f"drift profile for {name!r}, which is not served; served: {', '.join(pool.names())}")
        served = pool.get(name)
        vocab = profile.meta.get("vocab_size")
        if vocab is not None and vocab != served.input_embeddings().shape[0]:
            raise SpecError(f"drift profile for {name!r} was made with a vocabulary of {vocab} tokens, but the model "
                            f"has {served.input_embeddings().shape[0]}; rebuild it with serve-profile --model "
                            f"{served.spec.base_model}")
        monitors[name] = DriftMonitor(name, profile, served.tokenizer, served.input_embeddings(),
                                      window=drift.window, min_requests=drift.min_requests, every=drift.every,
                                      threshold=drift.threshold, on_report=_drift_gauges(stats))
    state = _State(pool, Batcher(pool, max_batch_size=limits.max_batch_size, wait_ms=limits.batch_wait_ms),
                   router, stats, limits, api_key or None, monitors)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await state.batcher.start()
        yield
        await state.batcher.stop()

    app = FastAPI(title="tunelab", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.tunelab = state
    _install_error_handlers(app)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "models": pool.names(), "routes": list(router.routes)}

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        _check_key(state, request)
        return Response(stats.render(), media_type=CONTENT_TYPE_LATEST)

    created = int(time.time())
    names = pool.names() + list(router.routes)

    def card(name: str) -> dict:
        return {"id": name, "object": "model", "created": created, "owned_by": "tunelab"}

    @app.get("/v1/models")
    async def models(request: Request) -> dict:
        _check_key(state, request)
        return {"object": "list", "data": [card(n) for n in names]}

    @app.get("/v1/models/{model}")
    async def model(request: Request, model: str) -> dict:
        _check_key(state, request)
        if model not in names:
            raise APIError(404, f"model {model!r} not found; available models: {', '.join(names)}", param="model",
                           code="model_not_found")
        return card(model)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        return await _handle(state, request, "chat")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await _handle(state, request, "completions")

    return app


def _drift_gauges(stats: ServeStats):
    def on_report(model: str, report: DriftReport) -> None:
        stats.drift.labels(model, "score").set(report.score)
        for name, value in report.components.items():
            stats.drift.labels(model, name).set(value)

    return on_report


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return APIError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", code=code).response()

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return APIError(500, f"internal error: {type(exc).__name__}", "server_error", "internal_error").response()


def _check_key(state: _State, request: Request) -> None:
    if state.api_key is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise APIError(401, "missing API key: send 'Authorization: Bearer <key>'", code="invalid_api_key")
    if not hmac.compare_digest(token.strip().encode(), state.api_key.encode()):
        raise APIError(401, "incorrect API key", code="invalid_api_key")


async def _read_json(request: Request, limit: int) -> dict:
    """The request body as a JSON object; 413 past `limit` bytes, 400 for anything that is not a JSON object."""
    too_big = APIError(413, f"request body larger than {limit} bytes; send less (server limit --max-body-bytes)",
                       code="request_too_large")
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    try:
        body = json.loads(b"".join(chunks))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise APIError(400, f"request body is not valid JSON: {exc}", code="invalid_json") from None
    except RecursionError:
        raise APIError(400, "request body is nested too deeply", code="invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(400, f"request body must be a JSON object, got {type(body).__name__}", code="invalid_json")
    return body


def _validate(cls: type[_Body], body: dict) -> _Body:
    try:
        req = cls.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = ".".join(str(p) for p in err["loc"])
        more = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
        raise APIError(400, f"{param}: {err['msg']}{more}", param=param) from None
    _check_strings(cls, body)
    return req


def _check_strings(cls: type[_Body], body: dict) -> None:
    """Refuse a lone UTF-16 surrogate (JSON `"\\ud800"` without its pair) in any field the request schema reads,
    naming the field; no tokenizer can encode one, and its own error would name neither field nor fix.
    Nesting deeper than 100 levels in such a field is refused the same way (check_value)."""
    for key in cls.model_fields:
        if key in body:
            try:
                check_value({key: body[key]}, "request")
            except UserFileError as exc:  # "request: field 'messages[0].content' holds a lone UTF-16 surrogate..."
                raise APIError(400, str(exc).removeprefix("request: "), param=key) from None


def _prompt(served: ServedModel, req: _Body, kind: str) -> tuple[list[int], str]:
    """(prompt token ids, the user-side text the drift monitor sees)."""
    try:
        if kind == "chat":
            messages = [{"role": m.role, "content": m.text()} for m in req.messages]  # type: ignore[attr-defined]
            user_text = "\n".join(m["content"] for m in messages if m["role"] == "user")
            return served.chat_prompt_ids(messages), user_text
        prompt = req.prompt  # type: ignore[attr-defined]
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise APIError(400, f"prompt: one prompt per request is supported, got {len(prompt)}", param="prompt")
            prompt = prompt[0]
        return served.text_prompt_ids(prompt), prompt
    except SpecError as exc:
        raise APIError(400, str(exc), param="messages", code="no_chat_template") from None
    except APIError:
        raise
    except Exception as exc:  # noqa: BLE001 - a template that fails on these messages (e.g. roles it does not allow)
        raise APIError(400, f"chat template of {served.spec.name!r} failed on these messages: {exc}",
                       param="messages") from None


def _job(state: _State, req: _Body, kind: str) -> tuple[GenJob, ServedModel, str, str | None, str]:
    variant, route = state.router.resolve(req.model, req.user)
    if variant not in state.pool.models:
        available = ", ".join(state.pool.names() + list(state.router.routes))
        raise APIError(404, f"model {req.model!r} not found; available models: {available}", param="model",
                       code="model_not_found")
    served = state.pool.get(variant)
    default = state.limits.default_max_tokens if kind == "chat" else 16  # OpenAI's completions default
    max_tokens = getattr(req, "max_completion_tokens", None) or req.max_tokens or min(default, state.limits.max_tokens)
    if max_tokens > state.limits.max_tokens:
        raise APIError(400, f"max_tokens={max_tokens} is above this server's limit of {state.limits.max_tokens}",
                       param="max_tokens", code="max_tokens_too_large")
    ids, text = _prompt(served, req, kind)
    if not ids:  # a tokenizer without BOS turns some prompts into nothing; generation needs one token
        raise APIError(400, "prompt: it has no tokens for this model; send some text", param="prompt")
    if len(ids) + max_tokens > served.max_context:
        raise APIError(400, f"prompt ({len(ids)} tokens) + max_tokens ({max_tokens}) exceeds the context of "
                       f"{variant!r} ({served.max_context} tokens); shorten the prompt or lower max_tokens",
                       param="messages" if kind == "chat" else "prompt", code="context_length_exceeded")
    stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
    job = GenJob(variant, ids, max_tokens, Sampling(req.temperature, req.top_p, req.seed), tuple(s for s in stop if s))
    return job, served, variant, route, text


async def _handle(state: _State, request: Request, kind: str) -> Response:
    """Shared path of chat and text completions: check, route, queue, answer (JSON or SSE)."""
    t0 = time.perf_counter()
    try:
        _check_key(state, request)
        body = await _read_json(request, state.limits.max_body_bytes)
        req = _validate(ChatBody if kind == "chat" else CompletionBody, body)
        if kind == "chat" and any(m.has_images() for m in req.messages):  # type: ignore[attr-defined]
            return await _handle_images(state, req, body, t0)
        job, _, variant, route, text = _job(state, req, kind)
        if state.in_flight >= state.limits.max_concurrency:
            raise APIError(429, f"server busy: {state.in_flight} requests in flight "
                           f"(limit {state.limits.max_concurrency}); retry later", "rate_limit_error",
                           "too_many_requests")
    except APIError as exc:  # counted under model "-": client-chosen names must not grow the label set
        state.stats.requests.labels("-", _ENDPOINTS[kind], str(exc.status)).inc()
        raise
    monitor = state.monitors.get(variant)
    if monitor is not None:  # scored off the event loop; never delays the answer
        asyncio.get_running_loop().run_in_executor(None, monitor.observe, text)
    state.in_flight += 1
    state.stats.in_flight.set(state.in_flight)
    ctx = _Ctx(state, kind, variant, route, req.user, t0, "chatcmpl" if kind == "chat" else "cmpl")
    headers = {"x-tunelab-model": variant}
    if req.stream:
        include_usage = bool((req.stream_options or {}).get("include_usage"))
        return StreamingResponse(_sse(ctx, job, include_usage), media_type="text/event-stream", headers=headers)
    try:
        parts, finish = [], None
        async for event in state.batcher.generate(job):
            if isinstance(event, Delta):
                parts.append(event.text)
            else:
                finish = event
        assert finish is not None
        if finish.reason == "error":
            raise APIError(500, finish.error or "generation failed", "server_error", "generation_failed")
        ctx.done(200, finish)
        return JSONResponse(ctx.body("".join(parts), finish), headers=headers)
    except BaseException:
        ctx.done(500, None)
        raise


_PROCESSORS: dict[str, Any] = {}


def _processor(served: ServedModel):
    """The processor of a served vision model (its run's tokenizer/ folder, or its base folder), or None."""
    from tunelab.models.vision import load_processor, vision_source

    key = served.spec.tokenizer_dir or served.spec.base_model
    if key not in _PROCESSORS:
        folder = served.spec.tokenizer_dir
        if folder is None or not any((Path(folder) / n).is_file()
                                     for n in ("processor_config.json", "preprocessor_config.json")):
            folder = vision_source(served.spec.base_model) if folder is None else None
        _PROCESSORS[key] = load_processor(folder) if folder is not None else None
    return _PROCESSORS[key]


async def _handle_images(state: _State, req: _Body, body: dict, t0: float) -> Response:
    """A chat request with image_url parts, for a vision model: decoded (data URLs only, size-limited),
    answered one at a time under the model's lock (not batched), returned as JSON or as one SSE chunk."""
    from tunelab.infer.vision import ImageInputError, answer_one, split_openai_content

    try:
        variant, route = state.router.resolve(req.model, req.user)
        if variant not in state.pool.models:
            raise APIError(404, f"model {req.model!r} not found; available models: {', '.join(state.pool.names())}",
                           param="model", code="model_not_found")
        served = state.pool.get(variant)
        processor = _processor(served)
        if processor is None or not served.spec.chat_template:
            raise APIError(400, f"model {variant!r} does not read images (a text-only model); send text only",
                           param="messages", code="images_not_supported")
        try:
            messages, images = split_openai_content(body["messages"], state.limits.max_image_bytes)
        except ImageInputError as exc:
            raise APIError(400, str(exc), param="messages", code="invalid_image") from None
        max_tokens = getattr(req, "max_completion_tokens", None) or req.max_tokens or min(
            state.limits.default_max_tokens, state.limits.max_tokens)
        if max_tokens > state.limits.max_tokens:
            raise APIError(400, f"max_tokens={max_tokens} is above this server's limit of {state.limits.max_tokens}",
                           param="max_tokens", code="max_tokens_too_large")
    except APIError as exc:
        state.stats.requests.labels("-", _ENDPOINTS["chat"], str(exc.status)).inc()
        raise
    state.in_flight += 1
    state.stats.in_flight.set(state.in_flight)
    ctx = _Ctx(state, "chat", variant, route, req.user, t0, "chatcmpl")

    def work():
        with served.lock, served.activate():
            return answer_one(served.module, processor, served.spec.chat_template, messages, images, max_tokens,
                              req.temperature, req.top_p)

    try:
        answer, n_prompt = await asyncio.get_running_loop().run_in_executor(None, work)
    except ImageInputError as exc:
        ctx.done(400, None)
        raise APIError(400, str(exc), param="messages", code="invalid_image") from None
    except BaseException:
        ctx.done(500, None)
        raise
    finish = Finish("stop" if answer.ended else "length", n_prompt, answer.n_tokens)
    ctx.done(200, finish)
    headers = {"x-tunelab-model": variant}
    if not req.stream:
        return JSONResponse(ctx.body(answer.text, finish), headers=headers)
    events = [_event(ctx.chunk(None, None, first=True)), _event(ctx.chunk(answer.text, None)),
              _event(ctx.chunk(None, finish.reason)), _event("[DONE]")]

    async def replay() -> AsyncIterator[str]:
        for e in events:
            yield e
    return StreamingResponse(replay(), media_type="text/event-stream", headers=headers)


class _Ctx:
    """Bookkeeping of one request: ids, response shapes, and the metrics/A-B record at the end."""

    def __init__(self, state: _State, kind: str, model: str, route: str | None, user: str | None, t0: float,
                 prefix: str) -> None:
        self.state, self.kind, self.model, self.route, self.user, self.t0 = state, kind, model, route, user, t0
        self.id = f"{prefix}-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.closed = False

    def done(self, status: int, finish: Finish | None) -> None:
        if self.closed:
            return
        self.closed = True
        latency = time.perf_counter() - self.t0
        self.state.in_flight -= 1
        self.state.stats.in_flight.set(self.state.in_flight)
        endpoint = _ENDPOINTS[self.kind]
        p, c = (finish.prompt_tokens, finish.completion_tokens) if finish else (0, 0)
        self.state.stats.observe(self.model, endpoint, status, latency, p, c)
        if self.route is not None:
            outcome = finish.reason if finish else "cancelled" if status == 499 else "error"
            self.state.router.record(self.route, self.model, self.user, latency, outcome, c, status=status)

    def usage(self, finish: Finish) -> dict:
        return {"prompt_tokens": finish.prompt_tokens, "completion_tokens": finish.completion_tokens,
                "total_tokens": finish.prompt_tokens + finish.completion_tokens}

    def body(self, text: str, finish: Finish) -> dict:
        if self.kind == "chat":
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                      "finish_reason": finish.reason}
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish.reason}
            obj = "text_completion"
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": [choice],
                "usage": self.usage(finish)}

    def chunk(self, text: str | None, finish_reason: str | None, first: bool = False) -> dict:
        if self.kind == "chat":
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else {}
            if text is not None:
                delta["content"] = text
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            obj = "chat.completion.chunk"
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
            obj = "text_completion"
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": [choice]}


def _event(obj: dict | str) -> str:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)}\n\n"


async def _sse(ctx: _Ctx, job: GenJob, include_usage: bool) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's stream format, ending with `data: [DONE]`."""
    status, finish = 500, None
    try:
        if ctx.kind == "chat":
            yield _event(ctx.chunk(None, None, first=True))
        first_token = True
        async for event in ctx.state.batcher.generate(job):
            if isinstance(event, Delta):
                if first_token:
                    ctx.state.stats.ttft.labels(ctx.model).observe(time.perf_counter() - ctx.t0)
                    first_token = False
                yield _event(ctx.chunk(event.text, None))
                continue
            finish = event
        assert finish is not None
        if finish.reason == "error":
            yield _event({"error": {"message": finish.error, "type": "server_error", "param": None,
                                    "code": "generation_failed"}})
        else:
            status = 200
            yield _event(ctx.chunk(None, finish.reason))
            if include_usage:
                yield _event({**ctx.chunk(None, None), "choices": [], "usage": ctx.usage(finish)})
        yield _event("[DONE]")
    finally:
        job.cancelled = True  # the client may have gone away mid-stream: free its batch row
        ctx.done(status if finish is not None else 499, finish)
