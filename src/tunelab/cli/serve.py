"""`tunelab serve`, `serve-stats`, `serve-profile` and `bench-serve`: thin wrappers over tunelab.infer."""

from __future__ import annotations

import asyncio
import logging
import math
from pathlib import Path
from typing import Annotated

import typer

from tunelab.utils.userfiles import UserFileError, read_text

app = typer.Typer(help="Serve models over an OpenAI-compatible API, watch them, load-test them.",
                  no_args_is_help=True, add_completion=False)

SPEC_HELP = ("NAME=BASE[,adapter=DIR][,template=FILE|tokenizer|NAMED][,tokenizer=DIR]; BASE is what load_model accepts "
             "(alias, HF folder, .gguf). template=FILE is the run's chat_template.jinja; template=tokenizer uses "
             "the base tokenizer's own template; a named one (chatml, ...) comes from tunelab.data.templates; "
             "tokenizer=DIR is a saved tokenizer (the run's tokenizer/). "
             "Repeat for several models: adapters on one base share its weights.")


def parse_model_arg(arg: str):
    """Turn one --model value into a ModelSpec; errors name the part and the fix."""
    from tunelab.infer.model_pool import ModelSpec

    name, sep, rest = arg.partition("=")
    if not sep or not name.strip() or not rest.strip():
        raise typer.BadParameter(f"{arg!r}: expected NAME=BASE[,adapter=DIR][,template=FILE][,tokenizer=DIR]",
                                 param_hint="--model")
    base, *options = rest.split(",")
    opts: dict[str, str] = {}
    for opt in options:
        key, eq, value = opt.partition("=")
        if not eq or key not in ("adapter", "template", "tokenizer"):
            raise typer.BadParameter(f"{arg!r}: unknown option {opt!r}; use adapter=DIR, template=FILE or "
                                     "tokenizer=DIR",
                                     param_hint="--model")
        opts[key] = value
    template = opts.get("template")
    from tunelab.data.templates import NAMED_TEMPLATES

    if template in NAMED_TEMPLATES:
        template = NAMED_TEMPLATES[template]
    elif template == "tokenizer":
        from tunelab.models import load_tokenizer

        template = load_tokenizer(base).chat_template
        if not template:
            raise typer.BadParameter(f"{arg!r}: the tokenizer of {base!r} has no chat template; "
                                     "give template=FILE", param_hint="--model")
    elif template is not None:
        path = Path(template)
        if not path.is_file():
            raise typer.BadParameter(f"{arg!r}: template file {path} not found", param_hint="--model")
        try:
            template = read_text(path)
        except UserFileError as e:
            raise typer.BadParameter(f"{arg!r}: {e}", param_hint="--model") from None
    return ModelSpec(name.strip(), base, opts.get("adapter"), template, opts.get("tokenizer"))


def _pairs(values: list[str], option: str) -> dict[str, str]:
    out = {}
    for value in values:
        key, sep, rest = value.partition("=")
        if not sep or not key or not rest:
            raise typer.BadParameter(f"{value!r}: expected NAME=VALUE", param_hint=option)
        out[key] = rest
    return out


def spec_from_run(path: Path):
    """A served model for a run folder: its base, its adapter (or full weights) and its own template."""
    from tunelab.infer.model_pool import ModelSpec
    from tunelab.run import Run
    from tunelab.runfolder import MODEL_DIR

    run = Run(path)
    weights = run.weights_dir()
    name = run.path.name
    tokenizer = str(run.folder.tokenizer_dir)
    if weights.name == MODEL_DIR:  # full weights: a model of its own, no base underneath
        return ModelSpec(name, str(weights), None, run.chat_template, tokenizer)
    return ModelSpec(name, run.base_model_name, str(weights), run.chat_template, tokenizer)


@app.command("serve")
def serve(
    runs: Annotated[list[Path] | None, typer.Argument(
        help="Run folders to serve; each becomes a model named after its folder (LoRA runs on one base share it).")]
    = None,
    model: Annotated[list[str] | None, typer.Option("--model", "-m", help=SPEC_HELP)] = None,
    route: Annotated[list[str] | None, typer.Option(
        "--route", help="A/B route NAME=VARIANT=WEIGHT,... e.g. chat=a=90,b=10")] = None,
    ab_log: Annotated[Path | None, typer.Option(help="JSONL file logging each routed request (variant, latency)")] = None,
    request_log: Annotated[Path | None, typer.Option(
        help="JSONL file logging every answered request (messages, answer) and POST /v1/feedback; the input of "
             "`tunelab retrain`. It holds users' texts: keep it private")] = None,
    drift_profile: Annotated[list[str] | None, typer.Option(
        help="NAME=profile.json (from serve-profile) to watch for drift")] = None,
    drift_threshold: Annotated[float, typer.Option(help="drift score above which a warning is logged")] = 0.25,
    output_profile: Annotated[list[str] | None, typer.Option(
        help="NAME=outputs.json (from serve-output-profile): watch NAME's answers for output drift")] = None,
    output_drift_threshold: Annotated[float, typer.Option(
        help="output drift score above which a warning is logged")] = 0.25,
    host: Annotated[str, typer.Option(help="address to bind; other than loopback, set an API key")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8000,
    api_key: Annotated[str | None, typer.Option(
        envvar="TUNELAB_API_KEY", help="require 'Authorization: Bearer KEY' (env TUNELAB_API_KEY)")] = None,
    max_body_bytes: Annotated[int, typer.Option(help="larger request bodies get 413")] = 1_000_000,
    max_tokens: Annotated[int, typer.Option(help="requests asking for more completion tokens get 400")] = 1024,
    max_concurrency: Annotated[int, typer.Option(help="requests in flight beyond this get 429")] = 64,
    max_batch_size: Annotated[int, typer.Option(help="requests generated together in one batch")] = 8,
    batch_wait_ms: Annotated[float, typer.Option(help="how long to wait for requests to join a batch")] = 5.0,
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    dtype: Annotated[str, typer.Option(help="auto, float32, bfloat16 or float16")] = "auto",
) -> None:
    """Serve models over an OpenAI-compatible HTTP API (chat, completions, streaming, /metrics)."""
    import uvicorn

    from tunelab.infer.ab import RouteError, parse_route_arg
    from tunelab.infer.drift import DriftProfile, OutputProfile
    from tunelab.infer.model_pool import SpecError
    from tunelab.infer.server import DriftSettings, ServeLimits, create_app
    from tunelab.models import ModelNotFound

    from tunelab.run import RunNotFound

    try:
        specs = [spec_from_run(r) for r in runs or []]
    except RunNotFound as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None
    specs += [parse_model_arg(m) for m in model or []]
    if not specs:
        typer.secho("error: nothing to serve; pass run folders (tunelab serve runs/a runs/b) or --model", fg="red",
                    err=True)
        raise typer.Exit(2)
    try:
        routes = {r.name: r for r in map(parse_route_arg, route or [])}
        profiles = {name: DriftProfile.load(path)
                    for name, path in _pairs(drift_profile or [], "--drift-profile").items()}
        output_profiles = {name: OutputProfile.load(path)
                           for name, path in _pairs(output_profile or [], "--output-profile").items()}
    except (RouteError, ValueError, OSError) as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        typer.secho(f"warning: binding {host} without an API key; anyone who can reach it can use it",
                    fg="yellow", err=True)
    limits = ServeLimits(max_body_bytes=max_body_bytes, max_tokens=max_tokens,
                         max_concurrency=max_concurrency,
                         max_batch_size=max_batch_size, batch_wait_ms=batch_wait_ms)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        web = create_app(specs, api_key=api_key, limits=limits, routes=routes, ab_log=ab_log,
                         drift_profiles=profiles, drift=DriftSettings(threshold=drift_threshold),
                         output_profiles=output_profiles,
                         output_drift=DriftSettings(threshold=output_drift_threshold), request_log=request_log,
                         device=device,
                         dtype=dtype)
    except (SpecError, RouteError, ModelNotFound) as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"serving {', '.join(s.name for s in specs)} on http://{host}:{port}/v1")
    uvicorn.run(web, host=host, port=port, log_level="info")


@app.command("serve-profile")
def serve_profile(
    data: Annotated[Path, typer.Argument(
        help="training data (.json/.jsonl: messages, sharegpt, alpaca, prompt, text)")],
    base: Annotated[str, typer.Option("--model", "-m", help="base model whose tokenizer and embeddings to use")],
    out: Annotated[Path, typer.Option("--out", "--output", "-o", help="profile JSON to write")],
    bins: Annotated[int, typer.Option(help="length bins")] = 10,
    top_k: Annotated[int, typer.Option(help="most frequent tokens kept apart; the rest share one bucket")] = 1000,
) -> None:
    """Profile training prompts (lengths, scripts, tokens, mean embedding) for `serve --drift-profile`."""
    from tunelab.bases import load_model
    from tunelab.infer.drift import build_profile, prompt_texts
    from tunelab.models import load_tokenizer

    texts = prompt_texts(data)
    embeddings = load_model(base).get_input_embeddings().weight
    profile = build_profile(texts, load_tokenizer(base), embeddings, bins=bins, top_k=top_k)
    profile.meta.update(data=str(data), base_model=base)
    profile.save(out)
    shares = ", ".join(f"{k} {v:.0%}" for k, v in profile.script_share.items())
    typer.echo(f"profiled {profile.n_texts} prompts ({shares}) -> {out}")


@app.command("serve-output-profile")
def serve_output_profile(
    source: Annotated[Path, typer.Argument(
        help="a run folder (its newest `tunelab eval` predictions), a predictions .jsonl, or a data file "
             "(its assistant answers)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="profile JSON to write")],
    base: Annotated[str | None, typer.Option(
        "--model", "-m", help="model whose tokenizer and embeddings to use (default: a run's base model)")] = None,
    bins: Annotated[int, typer.Option(help="length bins")] = 10,
) -> None:
    """Profile a run's validation answers (length, refusals, formats, mean embedding) for serve --output-profile."""
    from tunelab.data.io import DataError
    from tunelab.infer.drift import answer_texts, build_output_profile
    from tunelab.models import load_model, load_tokenizer
    from tunelab.runfolder import RunFolder

    try:
        path = source
        if source.is_dir():
            folder = RunFolder(source)
            preds = [p for p in folder.eval_results() if RunFolder.predictions_path(p).is_file()]
            if not preds:
                raise DataError(f"{source}: no eval predictions; run `tunelab eval {source} --data VAL_FILE` first "
                                "(its answers are the run's validation outputs)")
            path = RunFolder.predictions_path(max(preds, key=lambda p: p.stat().st_mtime))
            base = base or folder.base_name(folder.read_config().model.name)
        if base is None:
            raise DataError(f"{source} is a file: pass --model with the served model's base")
        texts = answer_texts(path)
        embeddings = load_model(base).get_input_embeddings().weight
        profile = build_output_profile(texts, load_tokenizer(base), embeddings, bins=bins)
    except (DataError, ValueError, OSError) as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None
    profile.meta.update(source=str(path), base_model=base)
    profile.save(out)
    formats = ", ".join(f"{k} {v:.0%}" for k, v in profile.format_share.items() if v)
    typer.echo(f"profiled {profile.n_texts} answers from {path} (refusals {profile.refusal_rate:.0%}; {formats}) "
               f"-> {out}")


def _fmt(value: float | None, unit: str = "") -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.3f}{unit}"


@app.command("serve-stats")
def serve_stats(
    url: Annotated[str | None, typer.Argument(help="server URL, e.g. http://127.0.0.1:8000")] = None,
    api_key: Annotated[str | None, typer.Option(envvar="TUNELAB_API_KEY", help="the server's API key")] = None,
    ab_log: Annotated[Path | None, typer.Option(help="also summarize this A/B JSONL log per variant")] = None,
) -> None:
    """Print a server's per-model requests, latency P50/P95/P99, tokens/s and drift (and an A/B log summary)."""
    import httpx

    from tunelab.infer.ab import summarize_ab_log
    from tunelab.infer.stats import summarize_metrics

    if url is None and ab_log is None:
        raise typer.BadParameter("give a server URL, --ab-log FILE, or both")
    if url is not None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        resp = httpx.get(url.rstrip("/") + "/metrics", headers=headers, timeout=30)
        if resp.status_code != 200:
            typer.secho(f"{url}/metrics answered HTTP {resp.status_code}: {resp.text[:300]}", fg="red", err=True)
            raise typer.Exit(1)
        typer.echo(f"{'model':<20} {'ok':>6} {'errors':>6} {'p50_s':>8} {'p95_s':>8} {'p99_s':>8} {'tok/s':>8} "
                   f"{'drift':>6} {'out_drift':>9} {'refusals':>8}")
        for model, row in sorted(summarize_metrics(resp.text).items()):
            typer.echo(f"{model:<20} {row.get('ok', 0):>6.0f} {row.get('errors', 0):>6.0f} {_fmt(row.get('p50')):>8} "
                       f"{_fmt(row.get('p95')):>8} {_fmt(row.get('p99')):>8} {_fmt(row.get('tokens_per_s')):>8} "
                       f"{_fmt(row.get('drift')):>6} {_fmt(row.get('output_drift')):>9} "
                       f"{_fmt(row.get('refusal_rate')):>8}")
    if ab_log is not None:
        from tunelab.infer.ab import read_ab_log
        from tunelab.infer.traffic import ab_significance

        typer.echo(f"\nA/B log {ab_log}:")
        try:
            summary, tests = summarize_ab_log(ab_log), ab_significance(read_ab_log(ab_log))
        except (ValueError, OSError, KeyError) as exc:
            typer.secho(f"error: {ab_log}: {exc}", fg="red", err=True)
            raise typer.Exit(2) from None
        for (route_name, variant), row in summary.items():
            outcomes = ", ".join(f"{k} {v}" for k, v in sorted(row["outcomes"].items()))
            typer.echo(f"  {route_name} -> {variant}: {row['requests']} requests, p50 {row['p50_s']:.3f}s, "
                       f"p95 {row['p95_s']:.3f}s ({outcomes})")
        for route_name, route_tests in tests.items():
            for t in route_tests:
                verdict = "significant at 5%" if t.p_value < 0.05 else "not significant at 5%"
                typer.echo(f"  {route_name}: success {t.a} {t.successes_a}/{t.n_a} vs {t.b} {t.successes_b}/{t.n_b}: "
                           f"diff {t.diff:+.3f} (95% CI {t.ci95[0]:+.3f}..{t.ci95[1]:+.3f}), z {t.z:+.2f}, "
                           f"p {t.p_value:.4f} ({verdict}; two-proportion z-test)")
        if not any(tests.values()):
            typer.echo("  no outcomes to test: send POST /v1/feedback {id, outcome} for routed answers")


@app.command("bench-serve")
def bench_serve(
    url: Annotated[str, typer.Argument(help="server URL, e.g. http://127.0.0.1:8000")],
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", min=1, help="parallel clients")] = 4,
    duration: Annotated[float, typer.Option(
        "--duration", "-d", min=0.1, help="stop sending after this many seconds")] = 30.0,
    max_requests: Annotated[int, typer.Option(
        "--max-requests", "-n", min=1, help="stop after this many requests")] = 100,
    model: Annotated[str | None, typer.Option(help="model to ask (default: the first in /v1/models)")] = None,
    max_tokens: Annotated[int, typer.Option(help="max_tokens of each request")] = 16,
    prompt: Annotated[str, typer.Option(help="user message of each request")] = "Write one sentence about the sea.",
    api_key: Annotated[str | None, typer.Option(envvar="TUNELAB_API_KEY", help="the server's API key")] = None,
) -> None:
    """Bounded load test: throughput and latency P50/P95/P99 of chat completions."""
    import httpx

    from tunelab.infer.stats import load_test

    if model is None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        resp = httpx.get(url.rstrip("/") + "/v1/models", headers=headers, timeout=30)
        if resp.status_code != 200:
            typer.secho(f"{url}/v1/models answered HTTP {resp.status_code}: {resp.text[:300]}", fg="red", err=True)
            raise typer.Exit(1)
        model = resp.json()["data"][0]["id"]
    res = asyncio.run(load_test(url, model=model, concurrency=concurrency, duration_s=duration,
                                max_requests=max_requests, max_tokens=max_tokens, prompt=prompt, api_key=api_key))
    typer.echo(f"model {model}: {res.requests} requests ({res.errors} errors) in {res.elapsed_s:.2f}s, "
               f"concurrency {concurrency}")
    typer.echo(f"throughput: {res.throughput_rps:.2f} req/s, {res.tokens_per_s:.1f} completion tokens/s")
    typer.echo(f"latency: p50 {_fmt(res.percentile(50), 's')}  p95 {_fmt(res.percentile(95), 's')}  "
               f"p99 {_fmt(res.percentile(99), 's')}")
    for sample in res.error_samples:
        typer.secho(f"error: {sample}", fg="red", err=True)
    if res.errors == res.requests:
        raise typer.Exit(1)
