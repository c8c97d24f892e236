"""What the server generates with: one base model in memory, many LoRA adapters on it (`ModelPool`),
and a request batcher (`Batcher`).

`ModelPool` loads each base model once. Specs that name an adapter are loaded onto that one
base with PEFT (`PeftModel.from_pretrained` for the first, `load_adapter` for the rest), so N
fine-tunes of one base cost one copy of the base weights plus N small adapters. Before a batch
runs, the pool activates its adapter with `set_adapter`, or runs the base alone inside
`disable_adapter()`.

`Batcher` gathers requests that arrive together (for `wait_ms`, up to `max_batch_size`),
groups them by model and sampling settings, left-pads each group and calls `generate` once
per group on a single worker thread. Tokens reach each request as they are produced (a
`BaseStreamer` that splits the batch by row), so streaming and non-streaming share one path.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

log = logging.getLogger("tunelab.serve")


class SpecError(ValueError):
    """A model spec cannot be served; the message names the spec and the fix."""


@dataclass(frozen=True)
class ModelSpec:
    """One servable model: `name` clients ask for, the base model, an optional adapter, and its chat template.

    `base_model` is anything `tunelab.bases.load_model` accepts (a run folder included). `chat_template` is the exact
    Jinja template the model was trained with (None: the model serves /v1/completions only).
    `tokenizer_dir` is a saved tokenizer folder (a run's `tokenizer/`); None loads the base model's.
    """

    name: str
    base_model: str
    adapter_dir: str | None = None
    chat_template: str | None = None
    tokenizer_dir: str | None = None


@dataclass
class ServedModel:
    """A loaded spec: the (possibly PEFT-wrapped) shared module, its tokenizer and the adapter to activate."""

    spec: ModelSpec
    module: Any
    tokenizer: Any
    adapter: str | None
    lock: threading.Lock

    @property
    def max_context(self) -> int:
        """Longest prompt + completion the model's positions allow."""
        return int(getattr(self.module.config, "max_position_embeddings", 2048) or 2048)

    def activate(self) -> contextlib.AbstractContextManager:
        """Context in which `module` computes this spec: its adapter set, or all adapters off for the base."""
        if not hasattr(self.module, "peft_config"):
            return contextlib.nullcontext()
        if self.adapter is None:
            return self.module.disable_adapter()
        self.module.set_adapter(self.adapter)
        return contextlib.nullcontext()

    def base_module(self):
        """The underlying transformers model (shared by every spec of this base)."""
        return self.module.get_base_model() if hasattr(self.module, "get_base_model") else self.module

    def input_embeddings(self) -> torch.Tensor:
        """The input embedding matrix, (V, H); used by the drift monitor."""
        return self.base_module().get_input_embeddings().weight

    @functools.cached_property
    def stop_ids(self) -> list[int]:
        """Token ids that end a completion: the template's turn-end markers, the tokenizer's EOS, the model's EOS."""
        from tunelab.data.templates import stop_token_ids

        ids = set(stop_token_ids(self.tokenizer, self.spec.chat_template)) if self.spec.chat_template else set()
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        eos = getattr(getattr(self.base_module(), "generation_config", None), "eos_token_id", None)
        if eos is not None:
            ids.update([eos] if isinstance(eos, int) else eos)
        return sorted(ids)

    def chat_prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of `messages` rendered with this model's own chat template plus the generation prompt."""
        from tunelab.data.templates import prompt_ids

        if self.spec.chat_template is None:
            raise SpecError(f"model {self.spec.name!r} has no chat template; use /v1/completions, "
                            "or serve it with the template it was trained with")
        return prompt_ids(self.tokenizer, self.spec.chat_template, messages)

    def text_prompt_ids(self, prompt: str) -> list[int]:
        """Token ids of a raw completion prompt (with the tokenizer's usual special tokens)."""
        return self.tokenizer(prompt)["input_ids"]


class ModelPool:
    """All served models, with each distinct base model loaded once and adapters attached by name."""

    def __init__(self, specs: Sequence[ModelSpec], *, device: str = "cpu", dtype: str = "auto",
                 load_model: Callable | None = None, load_tokenizer: Callable | None = None) -> None:
        """Load every spec; raises SpecError for duplicate names or missing adapter folders."""
        if load_model is None or load_tokenizer is None:
            from tunelab.bases import load_model as _lm
            from tunelab.models import load_tokenizer as _lt

            load_model, load_tokenizer = load_model or _lm, load_tokenizer or _lt
        _check_specs(specs)
        self.models: dict[str, ServedModel] = {}
        by_base: dict[str, list[ModelSpec]] = {}
        for spec in specs:
            by_base.setdefault(spec.base_model, []).append(spec)
        tokenizers: dict[str, Any] = {}
        for base_name, group in by_base.items():
            module = load_model(base_name, dtype=dtype, device=device).eval()
            names = peft_adapter_names([s for s in group if s.adapter_dir])
            module = _attach_adapters(module, [s for s in group if s.adapter_dir], names)
            lock = threading.Lock()  # one generate at a time per shared module (adapter switching is global)
            for spec in group:
                key = spec.tokenizer_dir or base_name
                if key not in tokenizers:
                    tokenizers[key] = _load_tokenizer(spec, load_tokenizer)
                adapter = names.get(spec.name)
                self.models[spec.name] = ServedModel(spec, module, tokenizers[key], adapter, lock)

    def get(self, name: str) -> ServedModel:
        """The served model called `name` (KeyError if none)."""
        return self.models[name]

    def names(self) -> list[str]:
        """Names of all served models, in spec order."""
        return list(self.models)


def _load_tokenizer(spec: ModelSpec, load_tokenizer: Callable):
    """The spec's own saved tokenizer (no remote code) or its base model's; padding falls back to EOS."""
    if spec.tokenizer_dir is not None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(spec.tokenizer_dir, trust_remote_code=False)
    else:
        tokenizer = load_tokenizer(spec.base_model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _check_specs(specs: Sequence[ModelSpec]) -> None:
    if not specs:
        raise SpecError("no models to serve; give at least one model spec")
    seen: set[str] = set()
    for spec in specs:
        if not spec.name.strip():
            raise SpecError(f"a spec for base {spec.base_model!r} has an empty name; give it a name clients can use")
        if spec.name in seen:
            raise SpecError(f"model name {spec.name!r} is used twice; give each served model its own name")
        seen.add(spec.name)
        if spec.adapter_dir is not None:
            cfg = Path(spec.adapter_dir) / "adapter_config.json"
            if not cfg.is_file():
                raise SpecError(f"model {spec.name!r}: {cfg} not found; adapter_dir must be a PEFT adapter folder "
                                "(the run's adapter/)")
        if spec.tokenizer_dir is not None and not (Path(spec.tokenizer_dir) / "tokenizer_config.json").is_file():
            raise SpecError(f"model {spec.name!r}: {spec.tokenizer_dir} holds no tokenizer_config.json; "
                            "tokenizer_dir must be a saved tokenizer folder (the run's tokenizer/)")


def peft_adapter_names(specs: list[ModelSpec]) -> dict[str, str]:
    """Served model name -> its PEFT adapter name: the name with '.' made '_' (PEFT keeps adapters in torch
    ModuleDicts, which refuse '.', and run folders such as `sft-v1.2` hold one), numbered when that collides."""
    out: dict[str, str] = {}
    for spec in specs:
        name = spec.name.replace(".", "_")
        out[spec.name] = name if name not in out.values() else f"{name}_{len(out)}"
    return out


def _attach_adapters(module, specs: list[ModelSpec], names: dict[str, str]):
    """Wrap `module` in one PeftModel holding every adapter of `specs` (named by `names`)."""
    if not specs:
        return module
    from peft import PeftModel

    first, rest = specs[0], specs[1:]
    peft_model = PeftModel.from_pretrained(module, first.adapter_dir, adapter_name=names[first.name],
                                           is_trainable=False)
    for spec in rest:
        peft_model.load_adapter(spec.adapter_dir, adapter_name=names[spec.name], is_trainable=False)
    return peft_model.eval()


# ----------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class Sampling:
    """Decoding settings; requests with equal settings for the same model share a batch."""

    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    def generate_kwargs(self) -> dict[str, Any]:
        if self.greedy:
            return {"do_sample": False}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p, "top_k": 0}


@dataclass
class Delta:
    """New completion text for one request."""

    text: str


@dataclass
class Finish:
    """The end of one request: why it ended and the token counts."""

    reason: str  # "stop" | "length" | "error" | "cancelled"
    prompt_tokens: int
    completion_tokens: int
    error: str | None = None


@dataclass
class GenJob:
    """One request's generation state. Worker-thread side: tokens, text; loop side: the event queue."""

    model: str
    prompt_ids: list[int]
    max_tokens: int
    sampling: Sampling
    stop: tuple[str, ...] = ()
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    loop: asyncio.AbstractEventLoop | None = None
    cancelled: bool = False
    tokens: list[int] = field(default_factory=list)
    sent: int = 0  # characters of text already sent
    done: bool = False

    def key(self) -> tuple:
        return (self.model, self.sampling)

    def send(self, event: Delta | Finish) -> None:
        assert self.loop is not None
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    def finish(self, reason: str, error: str | None = None) -> None:
        if not self.done:
            self.done = True
            self.send(Finish(reason, len(self.prompt_ids), len(self.tokens), error))


class _RowStreamer(BaseStreamer):
    """Receives each step's (B,) new tokens from `generate` and feeds them to the batch's jobs."""

    def __init__(self, jobs: list[GenJob], tokenizer, eos_ids: list[int]) -> None:
        self.jobs, self.tokenizer, self.eos = jobs, tokenizer, set(eos_ids)
        self.seen_prompt = False

    def put(self, value: torch.Tensor) -> None:
        if not self.seen_prompt:  # the first call carries the prompt ids (B, T)
            self.seen_prompt = True
            return
        for job, token in zip(self.jobs, value.reshape(-1).tolist()):
            if not job.done:
                self._advance(job, int(token))

    def _advance(self, job: GenJob, token: int) -> None:
        if job.cancelled:
            job.finish("cancelled")
            return
        if token in self.eos:
            self._flush(job, None)
            job.finish("stop")
            return
        job.tokens.append(token)
        text = self.tokenizer.decode(job.tokens, skip_special_tokens=True)
        cut = min((i for i in (text.find(s) for s in job.stop) if i >= 0), default=-1)
        if cut >= 0:
            self._flush(job, text[:cut])
            job.finish("stop")
        elif len(job.tokens) >= job.max_tokens:
            self._flush(job, text)
            job.finish("length")
        else:
            # Hold back a possible partial stop string and an incomplete multi-byte character.
            holdback = max(map(len, job.stop), default=1) - 1
            safe = text[:len(text) - holdback] if holdback else text
            self._flush(job, safe.rstrip("\ufffd"))

    def _flush(self, job: GenJob, text: str | None) -> None:
        if text is None:
            text = self.tokenizer.decode(job.tokens, skip_special_tokens=True)
        if len(text) > job.sent:
            job.send(Delta(text[job.sent:]))
            job.sent = len(text)

    def end(self) -> None:
        for job in self.jobs:
            if not job.done:
                self._flush(job, None)
                job.finish("cancelled" if job.cancelled else "length")


class _JobsDone(StoppingCriteria):
    """Stops a row once its job is done (stop string, its own max_tokens, client gone)."""

    def __init__(self, jobs: list[GenJob]) -> None:
        self.jobs = jobs

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        return torch.tensor([j.done or j.cancelled for j in self.jobs], dtype=torch.bool, device=input_ids.device)


def run_group(served: ServedModel, jobs: list[GenJob]) -> None:
    """Generate for jobs of one model and one sampling setting, as one left-padded batch (worker thread)."""
    tok = served.tokenizer
    batch = tok.pad({"input_ids": [j.prompt_ids for j in jobs]}, padding=True, padding_side="left",
                    return_tensors="pt")  # input_ids, attention_mask: (B, T)
    device = served.base_module().device
    streamer = _RowStreamer(jobs, tok, served.stop_ids)
    sampling = jobs[0].sampling
    try:
        with served.lock, torch.inference_mode():
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
            with served.activate():
                served.module.generate(
                    input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                    max_new_tokens=max(j.max_tokens for j in jobs), streamer=streamer,
                    stopping_criteria=StoppingCriteriaList([_JobsDone(jobs)]),
                    pad_token_id=tok.pad_token_id, eos_token_id=served.stop_ids,
                    **sampling.generate_kwargs())
        streamer.end()
    except Exception as exc:
        log.exception("generation failed for model %s", served.spec.name)
        for job in jobs:
            job.finish("error", f"generation failed: {type(exc).__name__}: {exc}")


class Batcher:
    """Collects requests for a few ms (up to `max_batch_size`), groups them and generates on one worker thread."""

    def __init__(self, pool: ModelPool, *, max_batch_size: int = 8, wait_ms: float = 5.0) -> None:
        self.pool, self.max_batch_size, self.wait_s = pool, max_batch_size, wait_ms / 1000.0
        self.queue: asyncio.Queue[GenJob] | None = None
        self.task: asyncio.Task | None = None
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tunelab-generate")
        self.batches = 0

    async def start(self) -> None:
        """Start the batching loop on the running event loop."""
        self.queue = asyncio.Queue()
        self.task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        """Stop the loop and the worker thread."""
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.executor.shutdown(wait=True, cancel_futures=True)

    async def generate(self, job: GenJob) -> AsyncIterator[Delta | Finish]:
        """Queue `job` and yield its events until its Finish; marks it cancelled if the consumer goes away."""
        assert self.queue is not None, "Batcher.start() was not called"
        job.loop = asyncio.get_running_loop()
        await self.queue.put(job)
        try:
            while True:
                event = await job.events.get()
                yield event
                if isinstance(event, Finish):
                    return
        finally:
            job.cancelled = True

    async def _loop(self) -> None:
        assert self.queue is not None
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self.queue.get()]
            deadline = time.monotonic() + self.wait_s
            while len(jobs) < self.max_batch_size:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    jobs.append(await asyncio.wait_for(self.queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            groups: dict[tuple, list[GenJob]] = {}
            for job in jobs:
                if not job.cancelled:
                    groups.setdefault(job.key(), []).append(job)
            for (name, _), group in groups.items():
                self.batches += 1
                await loop.run_in_executor(self.executor, run_group, self.pool.get(name), group)
