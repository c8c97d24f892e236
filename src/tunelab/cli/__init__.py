"""The `tunelab` command line: thin wrappers over the Python API."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from tunelab.cli.common import (MAX_SEED, _fail, _quiet_library_warnings, _set_threads, _user_errors,
                                check_option, check_output_file, err)

# Long contexts fragment CUDA memory: a 7B LoRA step at 128k tokens fails with 5 GiB free in pieces under
# the default allocator and fits with expandable segments (docs/speed.md). Read at the first CUDA allocation,
# so it is set here, before any command touches the GPU; a value the user exported wins.
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

app = typer.Typer(name="tunelab", help="Fine-tune large language models. A run is a folder: train writes it; "
                  "chat, eval, report and export read it.", no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False, rich_markup_mode="rich")
config_app = typer.Typer(help="Inspect configs: the resolved values and every key with its default.",
                         no_args_is_help=True)
app.add_typer(config_app, name="config")


def _schema_epilog() -> str:
    from tunelab.config import schema_lines

    lines = ["[bold]Config keys[/] (YAML, or KEY=VALUE overrides after the config path):", ""]
    for path, kind, default, desc in schema_lines():
        lines.append(f"  [cyan]{escape(path)}[/] ({escape(kind)}, default {escape(default)}): {escape(desc)}")
    return "\n\n".join(lines)


@app.command(epilog=_schema_epilog())
def train(
    config: Annotated[Path, typer.Argument(help="YAML run config (see the keys below).")],
    overrides: Annotated[Optional[list[str]], typer.Argument(
        help="KEY=VALUE overrides, e.g. train.lr=1e-4 method.r=8 output_dir=runs/try2.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
    nproc: Annotated[int, typer.Option("--nproc", min=1, help="Train on N processes of this machine (torchrun; "
                                       "parallel.strategy picks ddp or fsdp; train.batch_size is per process).")] = 1,
) -> None:
    """Train a run: config -> data -> model -> method -> loop -> run folder.

    Example: tunelab train examples/sft_lora.yaml train.epochs=1 output_dir=runs/quick

    CPU threads: train.threads=N or TUNELAB_THREADS=N (default: OMP_NUM_THREADS, else the cores this process may
    use, from its CPU affinity and cgroup quota); the count used is printed in the run's first line.
    """
    from tunelab.engine.launch import is_launched_rank, is_main_rank, ranked, run_torchrun

    if nproc > 1 and not is_launched_rank():  # start N ranks, each running this same command
        raise typer.Exit(run_torchrun(nproc, ["train", str(config), *(overrides or []), *(["--quiet"] if quiet else [])]))
    _quiet_library_warnings()
    import tunelab
    from tunelab.engine.loop import TrainingDiverged, TrainingInterrupted
    from tunelab.utils.io import DiskFullError, is_disk_full

    try:
        run = tunelab.train(config, overrides or [], progress=not quiet and is_main_rank())
    except TrainingInterrupted as e:
        again = [o for o in overrides or [] if not o.replace(" ", "").startswith("train.resume=")]
        err.print(f"[yellow]interrupted[/]: checkpoint saved at {e.checkpoint}\n"
                  f"continue with: {' '.join(['tunelab train', str(config), *again, 'train.resume=auto'])}")
        raise typer.Exit(130)
    except TrainingDiverged as e:
        _fail(ranked(e), 1)
    except _user_errors() as e:
        _fail(ranked(e))
    except OSError as e:  # a full disk under any writer (metrics, report, tracker), not only the atomic ones
        if not is_disk_full(e):
            raise
        _fail(ranked(DiskFullError(e.filename or config)))
    from tunelab.utils.exit import mark_train_finished

    mark_train_finished()
    if not is_main_rank():  # rank 0 reports for the whole run
        return
    s = run.summary
    eval_part = f", eval loss {s['eval_loss']:.4f}" if s.get("eval_loss") is not None else ""
    err.print(f"[green]done[/]: {s['steps']} steps, train loss {s['train_loss']:.4f}{eval_part}, {rate_text(s)} "
              f"-> {run.path}")
    typer.echo(str(run.path))


def rate_text(summary: dict) -> str:
    """The throughput part of the closing ``done:`` line, from a run's summary.

    Stages that score whole answers (DPO, GRPO...) count no loss tokens, so their line leaves that rate out
    rather than print "0 loss tok/s".
    """
    s = summary
    if not s.get("steady_tokens_per_s"):
        return f"{s['tokens_per_s']:,.0f} tok/s"
    loss_rate = f"; {s['loss_tokens_per_s']:,.0f} loss tok/s over training" if s.get("loss_tokens_per_s") else ""
    return f"{s['steady_tokens_per_s']:,.0f} tok/s after step 1 (real tokens{loss_rate}), first step {s['first_step_s']:.1f} s"


@config_app.command("show")
def config_show(
    config: Annotated[Path, typer.Argument(help="YAML run config.")],
    overrides: Annotated[Optional[list[str]], typer.Argument(help="KEY=VALUE overrides.")] = None,
) -> None:
    """Print the resolved config (every default filled in) as YAML."""
    from tunelab.config import dump_config, load_config

    try:
        typer.echo(dump_config(load_config(config, overrides or [])), nl=False)
    except _user_errors() as e:
        _fail(e)


@config_app.command("keys")
def config_keys() -> None:
    """List every config key with its type, default and meaning."""
    from rich.table import Table

    from tunelab.config import schema_lines

    console = Console()
    if not console.is_terminal:  # piped or redirected: tab-separated lines, nothing cut to a terminal's width
        for row in schema_lines():
            typer.echo("\t".join(str(x) for x in row))
        return
    table = Table("key", "type", "default", "meaning", show_lines=False)
    for row in schema_lines():
        table.add_row(*(escape(x) for x in row))
    table.columns[0].no_wrap = True  # a key is never cut or wrapped: the meaning column gives way
    console.print(table)


@app.command()
def chat(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by `tunelab train`.")],
    prompt: Annotated[Optional[str], typer.Option("--prompt", "-p", help="Answer this once and exit.")] = None,
    system: Annotated[Optional[str], typer.Option(help="A system message for the conversation.")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Longest answer in tokens.")] = 256,
    temperature: Annotated[float, typer.Option(help="0 = greedy (deterministic).")] = 0.0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass when temperature > 0.")] = 1.0,
    repetition_penalty: Annotated[float, typer.Option(
        help="Penalty on tokens already in the answer (1.0 = off); keeps small models out of loops.")] = 1.1,
    image: Annotated[Optional[list[Path]], typer.Option(
        "--image", "-i", help="Vision runs: an image file for the first message (repeat for several).")] = None,
) -> None:
    """Chat with a run (streaming), using the exact chat template it was trained with.

    Interactive: type a message, Enter to send; /reset clears the history, /exit (or Ctrl-D) quits.
    Vision runs: tunelab chat RUN --image a.png --prompt "What colour is the shape?"
    CPU threads: TUNELAB_THREADS=N (default: OMP_NUM_THREADS, else the cores this process may use).
    """
    _check_sampling(max_new_tokens, temperature, top_p)
    _quiet_library_warnings()
    _set_threads()
    from tunelab.infer.generate import stream_chat
    from tunelab.run import Run

    try:
        run = Run(run_dir)
        pictures, processor = [], None
        if run.is_vision:
            from tunelab.infer.vision import open_image_file

            pictures = [open_image_file(str(p)) for p in image or []]
            processor = run.load_processor()
        elif image:
            from tunelab.infer.vision import ImageInputError

            raise ImageInputError(f"--image: {run_dir} is a text-only run; it cannot read images")
        model, tok, template = run.load_model()
    except _user_errors() as e:
        _fail(e)
    history: list[dict] = [{"role": "system", "content": system}] if system else []

    def stream(msgs: list[dict]):
        if processor is None:
            return stream_chat(model, tok, template, msgs, max_new_tokens, temperature, top_p, repetition_penalty)
        from tunelab.infer.vision import stream_chat_vision

        return stream_chat_vision(model, processor, template, msgs, pictures, max_new_tokens, temperature, top_p,
                                  repetition_penalty)

    def answer(text: str) -> str:
        if pictures and not any(m["role"] == "user" for m in history):  # the images go with the first message
            from tunelab.data.images import IMAGE_TOKEN

            text = IMAGE_TOKEN * len(pictures) + text
        history.append({"role": "user", "content": text})
        parts = []
        for piece in stream(history):
            parts.append(piece)
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        reply = "".join(parts).strip()
        history.append({"role": "assistant", "content": reply})
        return reply

    if prompt is not None:
        answer(prompt)
        return
    err.print(f"chatting with {run_dir} (/reset, /exit)")
    while True:
        try:
            text = input("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            break
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            history[:] = history[:1] if system else []
            continue
        if text:
            answer(text)


def _check_sampling(max_new_tokens: int, temperature: float, top_p: float) -> None:
    """The sampling options chat and generate share, checked before the model loads."""
    check_option("--max-new-tokens", max_new_tokens, 1)
    check_option("--temperature", temperature, 0)
    check_option("--top-p", top_p, 0, 1, above=True)


@app.command()
def generate(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by `tunelab train`.")],
    data: Annotated[Path, typer.Option("--data", "-d", help="Records to answer: {\"prompt\": ...}, Alpaca, "
                                       "messages or ShareGPT; a final answer, if present, is kept as the reference.")],
    out: Annotated[Path, typer.Option("--out", "--output", "-o", help="Predictions JSONL to write (--output is the same).")],
    max_new_tokens: Annotated[int, typer.Option(help="Longest answer in tokens.")] = 128,
    temperature: Annotated[float, typer.Option(help="0 = greedy (deterministic).")] = 0.0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass when temperature > 0.")] = 1.0,
    batch_size: Annotated[int, typer.Option(help="Prompts generated together.")] = 8,
    seed: Annotated[int, typer.Option(help="Seed for sampling.")] = 0,
    limit: Annotated[Optional[int], typer.Option(help="Only the first N records.")] = None,
) -> None:
    """Batch prediction: answer every record of a file with the run's template; writes JSONL atomically.

    Input records (a final answer, when present, is kept as the reference):

    {"prompt": "What is 2 + 2?"} (prompt only; also "system", "reference"; generate's own output reads back)
    {"prompt": [{"role": "user", "content": "..."}]} (TRL style)
    {"instruction": "...", "input": "...", "output": "..."} (Alpaca, output optional)
    {"messages": [...]} or {"conversations": [...]} (OpenAI messages, ShareGPT)

    Example: tunelab generate runs/quick --data test.jsonl --out preds.jsonl --temperature 0.7
    CPU threads: TUNELAB_THREADS=N (default: OMP_NUM_THREADS, else the cores this process may use).
    """
    _check_sampling(max_new_tokens, temperature, top_p)
    check_option("--batch-size", batch_size, 1)
    check_option("--seed", seed, 0, MAX_SEED)
    check_option("--limit", limit, 1)
    check_output_file("--out", out)
    _quiet_library_warnings()
    _set_threads()
    from tunelab.data.sources import read_any
    from tunelab.infer.predict import predict_file
    from tunelab.run import Run

    if _is_tagger(run_dir):  # a token_classify run answers with tags and entities, not generated text
        return _tag(run_dir, data, out, batch_size, limit)
    try:
        read_any(data)  # bad or missing records fail here, before the model is loaded
        run = Run(run_dir)
        model, tok, template = run.load_model()
        n = predict_file(model, tok, template, str(data), out, max_new_tokens=max_new_tokens,
                         temperature=temperature, top_p=top_p, batch_size=batch_size, seed=seed, limit=limit,
                         progress=True, processor=run.load_processor() if run.is_vision else None)
    except _user_errors() as e:
        _fail(e)
    err.print(f"[green]wrote[/] {n} predictions to {out}")


def _is_tagger(run_dir: Path) -> bool:
    """True for a token_classify run; anything unreadable is left to the normal path to report."""
    from tunelab.runfolder import RunFolder

    try:
        info = RunFolder(run_dir).read_info() if Path(run_dir).is_dir() else None
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and info.get("stage") == "token_classify"


def _tag(run_dir: Path, data: Path, out: Path, batch_size: int, limit: int | None) -> None:
    """`tunelab generate` for a token_classify run: entities (text records) or tags (token records, CoNLL)."""
    from tunelab.training.tag_file import tag_file
    from tunelab.run import Run
    from tunelab.training.tagging import load_tagger

    try:
        if not data.is_file():
            raise FileNotFoundError(f"--data: {data} is not a file")
        run = Run(run_dir)
        model = load_tagger(run)
        n, metrics = tag_file(model, run.load_tokenizer(), data, out, batch_size=batch_size, limit=limit)
    except (*_user_errors(), FileNotFoundError) as e:
        _fail(e)
    err.print(f"[green]wrote[/] {n} tagged records to {out}")
    if metrics is not None:
        err.print(f"entity F1 {metrics['f1']:.3f} (precision {metrics['precision']:.3f}, recall "
                  f"{metrics['recall']:.3f}) on {metrics['entities_true']} reference entities")


@app.command()
def demo(
    out_dir: Annotated[Path, typer.Option("--out", "--out-dir", "-o",
                                          help="Where the data, run and result go (--out-dir is the same).")] = Path("runs/demo"),
    model: Annotated[str, typer.Option(help="Base model (default: the bundled SmolLM2-135M-Instruct).")] =
    "smollm2-135m",
    name: Annotated[str, typer.Option(help="The new name the model learns.")] = "Kestrel",
    vision: Annotated[bool, typer.Option("--vision", help="Instead: build a small LLaVA from SmolLM2 and a vision "
                                         "encoder from scratch, teach it to name, count and locate generated shapes.")]
    = False,
    seed: Annotated[int, typer.Option(help="--vision: seed of the images and the run.")] = 0,
) -> None:
    """Teach the bundled SmolLM2 a new identity with LoRA on CPU, and print the before/after score.

    With --vision: compose a vision-language model from SmolLM2-135M, train it on generated images of
    coloured shapes (colour, shape, how many, bounding box) and print held-out accuracy before and after.
    Example: tunelab demo --vision --out runs/demo-vision
    """
    _quiet_library_warnings()
    check_option("--seed", seed, 0, MAX_SEED)
    try:
        if vision:
            from tunelab.demo.vision import run_vision_demo

            run_vision_demo(Path("runs/demo-vision") if out_dir == Path("runs/demo") else out_dir, seed=seed)
            return
        from tunelab.demo.run import run_demo

        run_demo(out_dir, model=model, name=name)
    except _user_errors() as e:
        _fail(e)


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by `tunelab train`.")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="merged (safetensors), gguf, ollama, onnx or triton.")],
    out: Annotated[Optional[Path], typer.Option("--out", "--output", "-o", help="Output path (default "
                                                "RUN_DIR/export/FORMAT, or RUN_DIR/export/bundle for a run that "
                                                "cannot merge).")] = None,
    quant: Annotated[Optional[str], typer.Option(help="gguf/ollama: f32, f16, bf16, q8_0, q6_k, q5_k_m, q5_k_s, q5_1, q5_0, "
                                                    "q4_k_m, q4_k_s, q4_1, q4_0, q3_k_l, q3_k_m, q3_k_s, q2_k.")]
    = None,
    system: Annotated[Optional[str], typer.Option(help="ollama: a SYSTEM prompt for the Modelfile.")] = None,
    model_name: Annotated[Optional[str], typer.Option(help="triton: the model's name in the repository.")] = None,
    with_past: Annotated[Optional[bool], typer.Option("--with-past/--no-past",
                                                      help="onnx/triton: include the KV cache inputs.")] = None,
) -> None:
    """Export a run: adapters are merged into the base first (where the method allows), then written as FORMAT.

    Runs that cannot merge (prefix/prompt tuning, bottleneck adapters) export as --format merged to a
    bundle: base model + adapter + a README on loading them, reported as "NOT merged". The line
    printed names the format, the quant type and whether the trained part was merged.

    Example: tunelab export runs/quick --format gguf --quant q4_k_m
    """
    _quiet_library_warnings()
    from tunelab.export import check_export
    from tunelab.methods import NotMergeable
    from tunelab.run import Run

    options = {k: v for k, v in {"quant": quant, "system": system, "model_name": model_name,
                                 "with_past": with_past}.items() if v is not None}
    try:
        check_export(fmt, options)  # a wrong --format or option fails before the run folder is even read
        done = Run(run_dir).export_described(fmt, out, **options)
    except (*_user_errors(), NotMergeable) as e:  # ExportError is a user error
        _fail(e)
    from rich.markup import escape

    err.print(f"[green]exported[/] {escape(str(run_dir))} as {escape(done.label)}")
    typer.echo(str(done.path))


def _mount_optional() -> None:
    """Sub-apps that live in their own modules."""
    from tunelab.cli import evaluate, evidence

    app.command("eval")(evaluate.eval_cmd)

    app.command("report")(evidence.report)
    app.command("runs")(evidence.runs)
    app.command("import-ratings")(evidence.import_ratings)
    from tunelab.cli.retrain import retrain_cmd

    app.command("retrain")(retrain_cmd)
    from tunelab.cli.data import app as data_app

    app.add_typer(data_app, name="data", help="Prepare data: clean, dedup, split, extract-dialogue, augment, inspect, convert.")
    from tunelab.cli.estimate import estimate

    app.command("estimate")(estimate)
    from tunelab.cli.sweep import sweep

    app.command("sweep")(sweep)
    from tunelab.cli.studio import studio

    app.command("studio")(studio)
    from tunelab.cli.bench import app as bench_app

    app.add_typer(bench_app, name="bench")
    from tunelab.cli.serve import app as serve_app

    app.add_typer(serve_app)


_mount_optional()


def main() -> None:
    """Console-script entry point. A `tunelab train` that finished leaves without the interpreter's teardown
    (`tunelab.utils.exit`: seconds after the results are written); every other exit is Python's own."""
    from tunelab.utils.exit import can_exit_fast, fast_exit, train_finished

    try:
        app()
    except SystemExit as e:
        if e.code in (0, None) and train_finished() and can_exit_fast():
            fast_exit(0)
        raise
