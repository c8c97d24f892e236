"""`tunelab demo`: teach the bundled SmolLM2-135M-Instruct a new identity on CPU and prove it worked.

Before/after on held-out phrasings: the share of answers that contain the new name.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from tunelab.data.io import write_records
from tunelab.demo.identity import heldout_questions, make_identity_dataset

DEMO_NAME = "Kestrel"
DEMO_MAKER = "the tunelab project"


def demo_config(out_dir: Path, data_file: Path, model: str) -> dict:
    """The demo's run config: LoRA r16 on all linear layers, a few epochs over ~90 short samples."""
    return {
        "model": {"name": model},
        "data": {"train": str(data_file), "val_size": 0.1, "max_length": 128},
        "method": {"name": "lora", "r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"},
        "train": {"epochs": 3, "batch_size": 8, "lr": 1.0e-3, "warmup_ratio": 0.1, "scheduler": "cosine",
                  "seed": 42},
        "output_dir": str(out_dir / "run"),
    }


def score(answers: list[str], name: str) -> float:
    """Share of answers that mention the name (case-insensitive)."""
    return sum(name.lower() in a.lower() for a in answers) / max(len(answers), 1)


def run_demo(out_dir: str | Path = "runs/demo", model: str = "smollm2-135m", name: str = DEMO_NAME,
             maker: str = DEMO_MAKER, max_new_tokens: int = 40, progress: bool = True) -> dict:
    """Generate data, ask the base model, fine-tune, ask again; print and return the before/after scores."""
    import shutil

    import tunelab
    from tunelab.bases import load_model
    from tunelab.data.templates import resolve_template
    from tunelab.infer.generate import generate
    from tunelab.models import load_tokenizer

    console = Console()
    out_dir = Path(out_dir)
    if (out_dir / "run").exists():
        shutil.rmtree(out_dir / "run")
    data_file = out_dir / "identity.jsonl"
    records = make_identity_dataset(name, maker)
    write_records(data_file, records)
    questions = heldout_questions()
    prompts = [[{"role": "user", "content": q}] for q in questions]
    console.print(f"[bold]tunelab demo[/]: teach {model} that its name is {name!r} (made by {maker}).\n"
                  f"{len(records)} training samples written to {data_file}; {len(questions)} held-out questions.")

    tok = load_tokenizer(model)
    base = load_model(model)
    template = resolve_template(tok, None)
    console.print("asking the base model...")
    before = generate(base, tok, template, prompts, max_new_tokens=max_new_tokens)
    del base

    run = tunelab.train(demo_config(out_dir, data_file, model), progress=progress)
    tuned, tok, template = run.load_model()
    console.print("asking the fine-tuned model...")
    after = generate(tuned, tok, template, prompts, max_new_tokens=max_new_tokens)

    table = Table(title=f"Held-out questions: does the answer say {name!r}?", show_lines=True)
    table.add_column("question")
    table.add_column("base SmolLM2")
    table.add_column("fine-tuned")
    for q, b, a in zip(questions, before, after):
        mark = lambda s: ("[green]✓[/] " if name.lower() in s.lower() else "[red]✗[/] ") + s[:90]  # noqa: E731
        table.add_row(q, mark(b), mark(a))
    console.print(table)
    result = {"base": score(before, name), "tuned": score(after, name), "run": str(run.path),
              "n_questions": len(questions), "summary": run.summary}
    console.print(f"[bold]answers containing {name!r}: base {result['base']:.0%} -> fine-tuned {result['tuned']:.0%}[/]"
                  f"  (run folder: {run.path})")
    from tunelab.utils.io import atomic_write_json

    atomic_write_json(out_dir / "demo_result.json", {**result, "questions": questions, "before": before, "after": after})
    return result
