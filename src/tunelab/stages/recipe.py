"""What every stage does around its own loss: set up the run folder, model and method; save the result."""

from __future__ import annotations

import datetime as _dt
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch

from tunelab import __version__
from tunelab.config import RunCfg, dump_config
from tunelab.data.templates import resolve_template
from tunelab.engine.checkpoint import list_checkpoints
from tunelab.methods import count_parameters, get_method
from tunelab.models import load_model, load_tokenizer, pick_device
from tunelab.tracking import make_tracker
from tunelab.utils.io import atomic_dir, atomic_write_json, atomic_write_text


class RunFolderError(ValueError):
    """The output folder cannot be used as asked; the message says which setting to change."""


@dataclass
class RunSetup:
    """A model ready to train, with everything the stage needs around it."""

    cfg: RunCfg
    run_dir: Path
    model: torch.nn.Module
    tokenizer: object
    template: str
    method: ModuleType
    device: torch.device
    trackers: list


def check_output_dir(cfg: RunCfg) -> Path:
    """Refuse to silently overwrite a finished run or to restart over checkpoints without resume."""
    run_dir = Path(cfg.output_dir)
    if cfg.train.resume == "never":
        if (run_dir / "summary.json").is_file():
            raise RunFolderError(f"output_dir: {run_dir} already holds a finished run; choose another output_dir "
                                 "(e.g. output_dir=runs/my-run-2) or delete it")
        if list_checkpoints(run_dir):
            raise RunFolderError(f"output_dir: {run_dir} has checkpoints from an unfinished run; continue it with "
                                 "train.resume=auto, or choose another output_dir")
    return run_dir


def setup_run(cfg: RunCfg, progress: bool = True) -> RunSetup:
    """Create the run folder (config, tokenizer, template) and the model with the method applied."""
    run_dir = check_output_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg.train.device)
    tokenizer = load_tokenizer(cfg.model.name, cfg.model.trust_remote_code)
    template = resolve_template(tokenizer, cfg.model.chat_template)
    torch.manual_seed(cfg.train.seed)
    model = load_model(cfg.model.name, cfg.model.dtype, device, cfg.model.trust_remote_code)
    method = get_method(cfg.method.name)
    model = method.apply(model, cfg.method)
    atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
    atomic_write_text(run_dir / "chat_template.jinja", template)
    with atomic_dir(run_dir / "tokenizer") as tmp:
        tokenizer.save_pretrained(tmp)
        (tmp / "chat_template.jinja").write_text(template, encoding="utf-8")
    trainable, total = count_parameters(model)
    meta = {"tunelab_version": __version__, "base_model": cfg.model.name, "method": cfg.method.name,
            "stage": cfg.stage, "trainable_params": trainable, "total_params": total,
            "trainable_pct": round(100 * trainable / max(total, 1), 4),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "device": str(device), "torch": torch.__version__}
    atomic_write_json(run_dir / "run.json", meta)
    if progress:
        from rich.console import Console

        Console(stderr=True).print(
            f"[bold]{cfg.method.name}[/] on {cfg.model.name}: {trainable:,} trainable of {total:,} parameters "
            f"({meta['trainable_pct']:.2f}%) on {device}")
    trackers = [make_tracker(name) for name in dict.fromkeys(["jsonl", *cfg.train.report_to])]
    for t in trackers:
        t.start(run_dir, cfg.model_dump(mode="json"))
    return RunSetup(cfg, run_dir, model, tokenizer, template, method, device, trackers)


def finish_run(setup: RunSetup, summary: dict, data_stats: dict) -> Path:
    """Write the trained weights, summary.json and close trackers; remove the early-stopping scratch copy."""
    run_dir = setup.run_dir
    with atomic_dir(run_dir / setup.method.WEIGHTS_DIR) as tmp:
        setup.method.save(setup.model, tmp)
    shutil.rmtree(run_dir / "best", ignore_errors=True)
    atomic_write_json(run_dir / "summary.json", {**summary, "data": data_stats})
    for t in setup.trackers:
        t.finish()
    if setup.cfg.train.report:
        from tunelab.eval.report import write_report

        write_report(run_dir)
    return run_dir


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))
