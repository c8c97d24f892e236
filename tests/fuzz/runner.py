"""Run a whole family of fuzz cases and collect the outcomes (used by test_fuzz.py and `python -m`)."""

from __future__ import annotations

import json
import shutil

from .cases import ALPACA, OUTSIDE, WORK, Case, generate
from .harness import Outcome, make_sandbox, new_root, run_cli, run_http


def run_cli_family(cases: list[Case]) -> list[Outcome]:
    root = new_root()
    try:
        return [run_cli(case, root, i) for i, case in enumerate(cases)]
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run_server_family(cases: list[Case]) -> list[Outcome]:
    """One OpenAI-compatible app over tiny-llama (small limits, so no request generates for long)."""
    from fastapi.testclient import TestClient

    from tunelab.infer.model_pool import ModelSpec
    from tunelab.infer.server import ServeLimits, create_app
    from tunelab.models import load_tokenizer

    root = new_root()
    box = make_sandbox(root, Case("server", "box"), 0)
    try:
        spec = ModelSpec("base", "tiny-llama", None, load_tokenizer("tiny-llama").chat_template)
        app = create_app([spec], limits=ServeLimits(max_body_bytes=200_000, max_tokens=8))
        with TestClient(app, raise_server_exceptions=True) as client:
            return [run_http(case, client, box, (), lambda s: s) for case in cases]
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run_studio_family(cases: list[Case]) -> list[Outcome]:
    """One studio over a data dir in a sandbox, with one valid dataset (datasets/ok.json) in its library."""
    from fastapi.testclient import TestClient

    from tunelab.studio.app import create_app
    from tunelab.studio.paths import Settings

    root = new_root()
    box = make_sandbox(root, Case("studio", "box", files=cases[0].files if cases else {}), 0)
    studio = box / WORK / "studio"
    settings = Settings(data_dir=studio, max_upload_mb=1.0, poll_s=0.2)
    (settings.datasets / "ok.json").write_text(json.dumps(ALPACA), encoding="utf-8")
    outside_abs = str((box / OUTSIDE).resolve())

    def prepare(text: str) -> str:
        return text.replace("{OUTABS}", outside_abs).replace("{OUT}", OUTSIDE)

    db = f"{WORK}/studio/studio.db"
    try:
        with TestClient(create_app(settings, start_worker=False), raise_server_exceptions=True) as client:
            out = []
            for case in cases:
                # a refused request may touch only the job database; an accepted one anything in the studio's folder
                allowed = (db, db + "-journal", db + "-wal", db + "-shm") if case.must_fail else (f"{WORK}/studio",)
                out.append(run_http(case, client, box, allowed, prepare))
            return out
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run_command_family(cases: list[Case]) -> list[Outcome]:
    """CLI cases over one real run folder: a one-step LoRA run of tiny-llama, trained here (a few seconds)."""
    import tunelab

    root = new_root()
    try:
        data = root / "_run" / "train.json"
        data.parent.mkdir()
        data.write_text(json.dumps(ALPACA), encoding="utf-8")
        cfg = {"model": {"name": "tiny-llama"}, "data": {"train": str(data), "max_length": 64, "val_size": 0},
               "method": {"name": "lora", "r": 4}, "train": {"max_steps": 1, "batch_size": 2, "report": False},
               "output_dir": str(root / "_run" / "run")}
        run = tunelab.train(cfg, progress=False)
        return [run_cli(case, root, i, run.path) for i, case in enumerate(cases)]
    finally:
        shutil.rmtree(root, ignore_errors=True)


RUNNERS = {"config": run_cli_family, "overrides": run_cli_family, "data": run_cli_family,
           "server": run_server_family, "studio": run_studio_family, "commands": run_command_family}


def run_family(family: str, cases: list[Case] | None = None) -> list[Outcome]:
    return RUNNERS[family](generate(family) if cases is None else cases)


def report(family: str, outcomes: list[Outcome]) -> str:
    bad = [o for o in outcomes if not o.ok]
    head = f"{family}: {len(outcomes)} cases, {len(bad)} failing"
    return "\n".join([head, *("  " + o.line() for o in bad)])


def problem_kinds(outcomes: list[Outcome]) -> dict[str, int]:
    """Failing cases grouped by what went wrong ('uncaught UnicodeDecodeError', 'accepted bad input', ...)."""
    import re
    from collections import Counter

    kinds: Counter = Counter()
    for o in outcomes:
        for p in o.problems:
            kind = re.sub(r"^(uncaught \w+).*", r"\1", p)
            kind = re.sub(r"^(accepted bad input|server error \d+|wrote outside the run folder|left a partial run "
                          r"folder|left half-written files|message names none of|hang|no 'error:' line).*", r"\1", kind)
            kinds[kind] += 1
    return dict(kinds.most_common())
