"""What every stage does around its own loss: set up the run folder, model and method; save the result."""

from __future__ import annotations

import datetime as _dt
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from tunelab import __version__
from tunelab.config import RunCfg
from tunelab.data.templates import apply_template_options, resolve_template
from tunelab.engine import distributed
from tunelab.engine.checkpoint import list_checkpoints
from tunelab.engine.precision import resolve_precision
from tunelab.engine.recipe import Setup
from tunelab.kernels.warmup import start_compile_workers
from tunelab.methods import count_parameters, get_method
from tunelab.bases import load_model
from tunelab.models import load_tokenizer, pick_device, pick_dtype
from tunelab.models.loader import base_chain, base_source, vision_source
from tunelab.models.vision import VisionModelError, load_processor
from tunelab.runfolder import RunFolder
from tunelab.tracking import ALWAYS_ON, active_extra_trackers, make_tracker
from tunelab.training.vision import VISION_STAGES, check_switches, method_cfg_for_vision, set_trainable_parts
from tunelab.utils.cpu_bf16 import keep_trainable_fp32
from tunelab.utils.threads import apply_threads


class RunFolderError(ValueError):
    """The output folder cannot be used as asked; the message says which setting to change."""


@dataclass
class RunSetup(Setup):
    """A model ready to train, with everything the stage needs around it: the engine's Setup (model, method,
    run_dir, device, trackers; what `fit(setup, recipe)` takes) plus the run's config, tokenizer and template."""

    cfg: RunCfg
    tokenizer: object
    template: str
    processor: object = None
    """A vision-language model's processor (images + tokenizer + its chat template); None for text models."""


def check_output_dir(cfg: RunCfg) -> Path:
    """Refuse to silently overwrite a finished run or to restart over checkpoints without resume."""
    run_dir = Path(cfg.output_dir)
    if cfg.train.resume == "never":
        if RunFolder(run_dir).is_finished():
            raise RunFolderError(f"output_dir: {run_dir} already holds a finished run; choose another output_dir "
                                 "(e.g. output_dir=runs/my-run-2) or delete it")
        if list_checkpoints(run_dir):
            raise RunFolderError(f"output_dir: {run_dir} has checkpoints from an unfinished run; continue it with "
                                 "train.resume=auto, or choose another output_dir")
    return run_dir


TRAINED_MARKS = ("summary.json", "best", "adapter", "model")
"""Entries of a run folder that only training writes (the result, the best-eval copy, the weights)."""


def discard_unstarted_run(run_dir: Path, created_from: Path | None = None) -> bool:
    """Remove a run folder in which no training step left anything; True when it was removed.

    A run refused after `setup_run` (a bad record found while the data is tokenized, a template that fails on
    a conversation) would otherwise leave config.yaml, run.json, an empty metrics.jsonl and the tokenizer: a
    folder that looks like a run but never trained, and that a retry under the same output_dir has to step
    around. The caller decides that this invocation created the folder (a resumed one is never passed here);
    a folder holding a checkpoint, weights, a summary or a logged metrics line is kept. `created_from`, the
    outermost folder this invocation created on the way (`runs/` for `runs/r` when `runs/` was new), is removed
    too when nothing else is left in it.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or list_checkpoints(run_dir) or any((run_dir / n).exists() for n in TRAINED_MARKS):
        return False
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file() and metrics.stat().st_size > 0:
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    if created_from is not None and run_dir.is_relative_to(created_from):
        for parent in run_dir.parents:
            if not parent.is_relative_to(created_from):
                break
            try:
                parent.rmdir()  # only when empty
            except OSError:
                break
    return not run_dir.exists()


def setup_run(cfg: RunCfg, progress: bool = True) -> RunSetup:
    """Create the run folder (config, tokenizer, template) and the model with the method applied."""
    run_dir = check_output_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    try:  # before any tensor work; a bad TUNELAB_THREADS is a config problem, reported like one
        threads = apply_threads(cfg.train.threads)
    except ValueError as e:
        from tunelab.config import ConfigError

        raise ConfigError([str(e)]) from None
    device = pick_device(cfg.train.device)
    device = distributed.init(cfg.parallel, device)  # joins torchrun's process group, if any; cuda:LOCAL_RANK
    if device.type == "cuda" and cfg.train.speed.wants("compile_layers", "cuda"):
        start_compile_workers()  # the compiler's workers come up while the weights load (kernels.warmup)
    main = distributed.current().is_main  # only rank 0 writes the run folder
    vision_dir = vision_source(cfg.model.name)  # an image-text-to-text model: tunelab.training.vision
    check_switches(cfg.method, vision_dir is not None)
    if vision_dir is not None and cfg.stage not in VISION_STAGES:
        raise VisionModelError(f"stage: {cfg.stage} does not train vision-language models yet (their images would "
                               f"be ignored); use stage {' or '.join(VISION_STAGES)}")
    processor = None
    if vision_dir is not None:
        processor = load_processor(_processor_folder(cfg.model.name, vision_dir), cfg.model.trust_remote_code)
        tokenizer = processor.tokenizer
        template = resolve_template(processor, cfg.model.chat_template)
    else:
        tokenizer = load_tokenizer(cfg.model.name, cfg.model.trust_remote_code)
        template = resolve_template(tokenizer, cfg.model.chat_template)
    template = apply_template_options(template, **cfg.data.template_options.model_dump())
    torch.manual_seed(cfg.train.seed)
    method = get_method(cfg.method.name)
    quantize = method.load_settings(cfg.method) if hasattr(method, "load_settings") else None  # QLoRA: 4-bit at load
    say(progress and main, f"loading {cfg.model.name} on {device} ...")  # the seconds a large model takes
    model = load_model(cfg.model.name, cfg.model.dtype, device, cfg.model.trust_remote_code, quantize=quantize)
    method_cfg = method_cfg_for_vision(model, cfg.method) if processor is not None else cfg.method
    model = method.apply(model, method_cfg)
    if processor is not None:
        set_trainable_parts(model, cfg.method)
    dtype = str(pick_dtype(cfg.model.dtype, device)).removeprefix("torch.")
    if (device.type == "cpu" and cfg.model.dtype == "auto" and dtype == "bfloat16"
            and resolve_precision(cfg.train.precision, device) == "bf16"):
        if keep_trainable_fp32(model):  # auto bf16 on a CPU: bf16 products, float32 master weights (utils.cpu_bf16)
            dtype = "bfloat16, trained weights float32"
    folder = RunFolder(run_dir)
    if main:
        folder.write_config(cfg)
        folder.write_template(template)
        if processor is not None:  # the processor (image settings + tokenizer) travels with the run
            folder.write_processor(processor, template)
        else:
            folder.write_tokenizer(tokenizer, template)
    trainable, total = count_parameters(model)
    meta = {"tunelab_version": __version__, "base_model": cfg.model.name, "method": cfg.method.name,
            "stage": cfg.stage, "trainable_params": trainable, "total_params": total,
            "trainable_pct": round(100 * trainable / max(total, 1), 4),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "device": str(device), "dtype": dtype,
            "threads": threads, "torch": torch.__version__,
            "processes": distributed.current().world_size}
    meta.update(base_source(cfg.model.name))  # what other tools load as the base (see models.loader.base_source)
    if chain := base_chain(cfg.model.name):  # a run folder as the base: record what this run stands on
        meta.update(base_chain=chain, root_model=chain[-1]["base_model"])
    if main:
        folder.write_info(meta)
    if progress and main:
        from rich.console import Console

        Console(stderr=True).print(
            f"[bold]{cfg.method.name}[/] on {cfg.model.name}: {trainable:,} trainable of {total:,} parameters "
            f"({meta['trainable_pct']:.2f}%) on {device} in {meta['dtype']}, "
            f"{threads} CPU thread{'s' if threads != 1 else ''}")
    trackers = [make_tracker(name) for name in dict.fromkeys([*ALWAYS_ON, *cfg.train.report_to])]
    trackers += active_extra_trackers()  # a caller's live watchers (tunelab.sweep's pruning), if any
    trackers = trackers if main else []
    for t in trackers:
        t.start(run_dir, cfg.model_dump(mode="json"))
    return RunSetup(model=model, method=method, run_dir=run_dir, device=device, trackers=trackers, cfg=cfg,
                    tokenizer=tokenizer, template=template, processor=processor)


def _processor_folder(name: str, vision_dir: Path) -> Path:
    """Where the processor of model.name is: a run folder's tokenizer/ (what that run trained with), else the
    model folder itself."""
    from tunelab.models.loader import resolve_model

    src = resolve_model(name)
    return RunFolder(src.path).tokenizer_dir if src.kind == "run" else vision_dir


def finish_run(setup: RunSetup, summary: dict, data_stats: dict) -> Path:
    """Write the trained weights, summary.json and close trackers; remove the early-stopping scratch copy."""
    run_dir, folder = setup.run_dir, RunFolder(setup.run_dir)
    distributed.save_weights(setup.model, setup.method, run_dir / setup.method.WEIGHTS_DIR)  # atomic, rank 0
    if not distributed.current().is_main:  # rank 0 writes the rest; the others wait for it and leave
        distributed.shutdown()
        return run_dir
    shutil.rmtree(folder.best_dir, ignore_errors=True)
    folder.write_summary({**summary, "data": data_stats})
    for t in setup.trackers:
        t.finish()
    if setup.cfg.train.report:
        from tunelab.eval.report import write_report

        write_report(run_dir)
    distributed.shutdown()
    return run_dir


def chat_reference_data(cfg: RunCfg, setup: RunSetup) -> Callable[[str], list]:
    """A loader of SFT samples from one data file, tokenized as this run's training data is (same tokenizer,
    template, max_length and packing, all from memory): the reference data of optim.ewc for stages that train
    on chat samples (sft, pretrain, distill, selftrain)."""
    from tunelab.config.data import DataCfg
    from tunelab.data.pipeline import prepare_data

    def load(path: str) -> list:
        n = cfg.optim.ewc.samples if cfg.optim.ewc else None
        data_cfg = cfg.data.model_copy(update={
            "train": path, "eval": None, "val_size": 0.0, "max_samples": n, "streaming": False, "val_records": 0,
            "format": DataCfg.model_fields["format"].default})
        return prepare_data(data_cfg, setup.tokenizer, setup.template, cfg.train.seed).train

    return load


def load_split(data_cfg, load, seed: int, stage: str = "this") -> tuple[list, list]:
    """Examples for a stage with its own data format: `load(path)` for train (and eval), then the val split.

    Applies data.max_samples and data.val_size exactly as SFT does; `load` raises DataError on bad records.
    Such stages read one training file: several `data.train` sources raise a ConfigError naming `stage`.
    """
    from tunelab.config import ConfigError
    from tunelab.data.io import DataError
    from tunelab.data.pipeline import split_train_val

    try:
        path = data_cfg.single_train(stage)
    except ValueError as e:
        raise ConfigError([str(e)]) from None
    train = load(path)
    if data_cfg.max_samples:
        train = train[: data_cfg.max_samples]
    if data_cfg.eval:
        val = load(data_cfg.eval)
    else:
        train, val = split_train_val(train, data_cfg.val_size, seed)
    if not train:
        raise DataError(f"{path}: no training examples left after the validation split")
    return train, val


def say(progress: bool, message: str) -> None:
    """Print one status line to stderr when progress display is on."""
    if progress:
        from rich.console import Console

        Console(stderr=True).print(message)


def read_metrics(run_dir: Path) -> list[dict]:
    """Every line of a run's metrics.jsonl (the loop's own log)."""
    return RunFolder(run_dir).read_metrics()


def recount_parameters(setup: RunSetup) -> None:
    """Update run.json's parameter counts after a stage wrapped the model (e.g. added a scoring head)."""
    if not distributed.current().is_main:  # only rank 0 writes the run folder
        return
    trainable, total = count_parameters(setup.model)
    RunFolder(setup.run_dir).update_info(dict(trainable_params=trainable, total_params=total,
                                              trainable_pct=round(100 * trainable / max(total, 1), 4)))
