"""`tunelab estimate`: memory and time of a run config before it starts (no weights are loaded)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from tunelab.cli.common import _fail, _quiet_library_warnings, _user_errors


def _train_samples(cfg) -> int | None:
    """Records in the config's .json/.jsonl training files; None when a source is another kind or missing."""
    from tunelab.estimate import count_train_records

    total = 0
    for source in cfg.data.sources():
        path = Path(source.path)
        if path.suffix not in (".json", ".jsonl") or not path.is_file():
            return None
        total += count_train_records(str(path))
    return total


def estimate(
    config: Annotated[Path, typer.Argument(help="YAML run config.")],
    overrides: Annotated[list[str] | None, typer.Argument(help="KEY=VALUE overrides, e.g. train.batch_size=4.")] = None,
    device: Annotated[str, typer.Option(help="Device kind for the time estimate: auto, cpu, cuda, h100.")] = "auto",
    samples: Annotated[int | None, typer.Option(min=1, help="Training records (default: counted in "
                                                   "data.train when it is .json/.jsonl).")] = None,
    mean_tokens: Annotated[float | None, typer.Option(min=1, help="Mean tokens per sample (default: measured "
                                                         "on up to 2000 sft records with the model's tokenizer; "
                                                         "data.max_length, an upper bound, where it cannot be).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full estimate as JSON.")] = False,
) -> None:
    """Estimate parameters, memory (weights, gradients, optimizer, activations) and time of a run config.

    Sample lengths are measured on the config's data with the model's tokenizer when both are on this machine.

    Example: tunelab estimate examples/sft_lora.yaml train.batch_size=4 --device cpu
    """
    _quiet_library_warnings()
    from tunelab.config import load_config
    from tunelab.estimate import EstimateError, estimate_run, format_estimate, measure_mean_tokens

    try:
        cfg = load_config(config, overrides or [])
        n = samples if samples is not None else _train_samples(cfg)
        lengths = "given"
        if mean_tokens is None:
            try:
                mean_tokens, measured = measure_mean_tokens(cfg)
                lengths = f"measured on {measured:,} records"
            except EstimateError as e:
                lengths = f"not measured: {e}; every sample assumed to fill data.max_length (an upper bound)"
        est = estimate_run(cfg, n, mean_tokens, device)
    except (*_user_errors(), EstimateError) as e:
        _fail(e)
    est["time"]["sample_lengths"] = lengths
    typer.echo(json.dumps(est, indent=2) if as_json else format_estimate(est))
