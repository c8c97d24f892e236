"""The training loop shared by every stage: `fit(setup, recipe)`.

A stage hands over a Setup (model, method, run folder, device, trackers) and a Recipe (its samples, a
collate function, a loss function returning (summed loss, target-token count), and its config sections;
engine/recipe.py); the loop does the rest: ordering, accumulation with
token-normalized loss, clipping, schedules, evaluation, early stopping, checkpoints,
signals and the NaN guard. One place to look, top to bottom.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tunelab.config.optim import OptimCfg
from tunelab.config.schema import TrainCfg
from tunelab.engine import distributed
from tunelab.engine.checkpoint import check_checkpoint, latest_valid_checkpoint, load_checkpoint, save_checkpoint
from tunelab.engine.dcp import load_any_checkpoint, save_any_checkpoint
from tunelab.engine.loss import LOSS_COUNT_KEY, add_metrics, loss_count, mean_metrics
from tunelab.engine.precision import Precision
from tunelab.engine.optim import (
    build_optimizer,
    build_regulariser,
    build_scheduler,
)
from tunelab.engine.recipe import LossFn, Recipe, Setup
from tunelab.kernels.lora import unwrapped
from tunelab.runfolder import RunFolder
from tunelab.tracking.progress import TrainProgress

__all__ = ["LOSS_COUNT_KEY", "FitResult", "LossFn", "Recipe", "Setup", "TrainingDiverged", "TrainingInterrupted",
           "accumulate_gradients", "evaluate_loss", "evaluate_sets", "fit", "loss_count", "micro_batches"]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the last good checkpoint."""


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM arrived; a checkpoint was saved first (its path is in .checkpoint)."""

    def __init__(self, checkpoint: Path):
        super().__init__(f"interrupted; checkpoint saved at {checkpoint}")
        self.checkpoint = checkpoint


@dataclass
class FitResult:
    """What the loop did: the final position and the numbers for summary.json."""

    step: int
    stopped: str
    summary: dict = field(default_factory=dict)


def micro_batches(samples: Sequence, batch_size: int, seed: int, start: int, order_fn) -> Iterator[tuple[int, list]]:
    """Endless (micro_index, samples) stream over epochs, in each epoch's seeded order, from `start` on."""
    per_epoch = math.ceil(len(samples) / batch_size)
    index = start
    while True:
        epoch, k = divmod(index, per_epoch)
        order = order_fn(len(samples), seed, epoch)
        for j in range(k, per_epoch):
            yield index, [samples[i] for i in order[j * batch_size:(j + 1) * batch_size]]
            index += 1


def accumulate_gradients(model, batches: list[dict], loss_fn: LossFn, autocast,
                         metrics: dict | None = None, sync: bool = True,
                         scale: Callable | None = None) -> tuple[float | torch.Tensor, int]:
    """Backpropagate a whole accumulated batch with the loss normalized by its total target tokens.

    Returns (mean loss per target token, target tokens). Dividing each micro-batch's summed loss
    by the global count makes N micro-batches give exactly the gradient of one big batch.
    If `metrics` is a dict, the loss function's extra metrics are averaged into it (weighted by count).
    `sync=False` returns the mean loss as a 0-dim device tensor (no wait for the GPU); batches that
    carry `loss_count` (set by the loop from the host copy) are counted without touching the device.
    `scale(loss)` (fp16 loss scaling, engine/precision.py) is applied before backward when given.
    """
    n_tokens = sum(loss_count(b) for b in batches)
    if n_tokens == 0:
        raise ValueError("an accumulated batch has no target tokens; check the data's label masks")
    total = 0.0
    for b in batches:
        with autocast():
            out = loss_fn(model, b)
        loss_sum, count = out[0], out[1]
        (scale(loss_sum / n_tokens) if scale is not None else loss_sum / n_tokens).backward()
        total = total + (loss_sum.detach().float() if not sync else float(loss_sum.detach()))
        add_metrics(metrics, out[2] if len(out) > 2 else None, count)
    if metrics is not None:
        mean_metrics(metrics)
    return total / n_tokens, n_tokens


@torch.no_grad()
def evaluate_loss(model, samples: Sequence, collate_fn, loss_fn: LossFn, batch_size: int, device, autocast,
                  metrics: dict | None = None) -> float:
    """Mean per-token loss over samples (summed over all tokens, then divided once).

    If `metrics` is a dict, the loss function's extra metrics are averaged into it (weighted by count).
    """
    overall, _ = evaluate_sets(model, {"all": samples}, collate_fn, loss_fn, batch_size, device, autocast, metrics)
    return overall


@torch.no_grad()
def evaluate_sets(model, sets: Mapping[str, Sequence], collate_fn, loss_fn: LossFn, batch_size: int, device,
                  autocast, metrics: dict | None = None,
                  on_batch: Callable[[int, int], None] | None = None) -> tuple[float, dict[str, float]]:
    """(mean per-token loss over the union of the named sets, {name: mean per-token loss of that set}).

    Each set is batched on its own, so a multi-task run's per-task losses are exactly what evaluating
    each task alone gives; the overall loss sums every set's loss and count before dividing, so it
    equals evaluating the union. Extra metrics from `loss_fn` are averaged over the union into `metrics`.
    `on_batch(done, total)` is called after each batch (a progress display: evaluation can take minutes).
    """
    was_training = model.training
    model.eval()
    sums: dict[str, tuple[float, int]] = {}
    n_batches = sum(math.ceil(len(samples) / batch_size) for samples in sets.values())
    done = 0
    for name, samples in sets.items():
        total, n = 0.0, 0
        for i in range(0, len(samples), batch_size):
            batch = _to(collate_fn(samples[i:i + batch_size]), device)
            with autocast():
                out = loss_fn(model, batch)
            loss_sum, count = out[0], out[1]
            total += float(loss_sum)
            n += count
            add_metrics(metrics, out[2] if len(out) > 2 else None, count)
            done += 1
            if on_batch is not None:
                on_batch(done, n_batches)
        sums[name] = (total, n)
    if metrics is not None:
        mean_metrics(metrics)
    model.train(was_training)
    overall = sum(t for t, _ in sums.values()) / max(sum(n for _, n in sums.values()), 1)
    return overall, {name: t / max(n, 1) for name, (t, n) in sums.items()}


def eval_log_line(overall: float, per_set: Mapping[str, float], extra: Mapping[str, float],
                  perplexity: bool = True) -> dict:
    """The metrics.jsonl eval line: eval_loss (and eval_ppl) overall, eval_loss/<set> (eval_ppl/<set>) per named set.

    `perplexity=False` for losses that are not a per-token cross-entropy (DPO, reward, classify...): exp of
    such a loss is no perplexity (for DPO it starts at exp(0.693) = 2.0), so it is not logged.
    """
    line = {"eval_loss": overall, **({"eval_ppl": _ppl(overall)} if perplexity else {})}
    for name, loss in per_set.items():
        line[f"eval_loss/{name}"] = loss
        if perplexity:
            line[f"eval_ppl/{name}"] = _ppl(loss)
    return {**line, **{f"eval_{k}": v for k, v in extra.items()}}


def has_perplexity(loss_fn: LossFn, collate_fn, samples: Sequence) -> bool:
    """Whether exp(eval loss) is a perplexity: the loss is counted per target token (no `loss_count` in its
    batches: pairs, examples and prompts set one) and the loss function does not say otherwise with a
    ``perplexity = False`` attribute (distillation's KL mix is per token but no cross-entropy)."""
    if getattr(loss_fn, "perplexity", True) is False or not len(samples):
        return False
    return LOSS_COUNT_KEY not in collate_fn(list(samples[:1]))


def _ppl(loss: float) -> float:
    return math.exp(min(loss, 50))


def _to(batch: dict, device, non_blocking: bool = False) -> dict:
    return {k: v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v
            for k, v in batch.items()}


def prepare_batch(batch: dict, device, ahead: bool) -> tuple[dict, int]:
    """(the batch on `device`, its real input tokens), everything counted from the host copy.

    `ahead`: pin the host tensors and copy them with non_blocking transfers, and record the batch's
    `loss_count` from the host copy, so neither the copy nor the counting waits for the GPU; the
    host collates the next batch while the GPU still runs the step before (the loop never syncs
    between steps in this mode).
    """
    mask = batch.get("attention_mask")
    n_inputs = int(mask.sum()) if isinstance(mask, torch.Tensor) and not mask.is_cuda else None
    if not ahead:
        moved = _to(batch, device)
        return moved, n_inputs if n_inputs is not None else int(moved["attention_mask"].sum())
    if LOSS_COUNT_KEY not in batch and "labels" in batch:
        batch = {**batch, LOSS_COUNT_KEY: loss_count(batch)}
    if torch.device(device).type == "cuda":
        batch = {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    return _to(batch, device, non_blocking=True), n_inputs or 0


@contextlib.contextmanager
def _signals_to_flag(flag: dict):
    """Turn the first SIGINT/SIGTERM into a flag the loop checks between steps (a second one kills as usual)."""

    def handler(signum, frame):
        flag["signal"] = signum
        signal.signal(signum, previous[signum])

    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread: leave signals alone
            pass
    try:
        yield
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)


def total_steps_for(cfg: TrainCfg, n_samples: int) -> int:
    """Optimizer steps the run will take: max_steps, or epochs over the data."""
    if cfg.max_steps:
        return cfg.max_steps
    micro_per_epoch = math.ceil(n_samples / cfg.batch_size)
    return max(1, math.ceil(cfg.epochs * micro_per_epoch / cfg.grad_accum))



def _diverged(loss: float, step: int, run_dir: Path) -> "TrainingDiverged":
    """The error for a non-finite loss: the step, and the newest checkpoint that verifies, to resume from."""
    last = latest_valid_checkpoint(run_dir)
    return TrainingDiverged(
        f"loss became {loss} at step {step}; weights were not updated. "
        f"Last good checkpoint: {last or 'none (set train.save_every)'}. "
        "Lower train.lr, keep train.max_grad_norm set, or check the data for empty answers")

def fit(setup: Setup, recipe: Recipe, progress: bool = True) -> FitResult:
    """Train `setup.model` (already prepared by `setup.method.apply`) on `recipe`; leave the final/best weights in it.

    `setup` says what is trained and where (model, method, run folder, device, trackers); `recipe` says on what
    and how (samples or a stream, validation sets, collate, loss, epoch order, the run's `train` and `optim`
    settings from memory, EWC's reference data); see engine/recipe.py. `progress` shows the progress bar.
    """
    model, method, device = setup.model, setup.method, setup.device
    cfg, collate_fn, loss_fn, order_fn = recipe.train, recipe.collate, recipe.loss, recipe.order
    train_samples, val_samples, train_stream = recipe.samples, recipe.val, recipe.stream
    run_dir = Path(setup.run_dir)
    # --- distributed (engine/distributed.py): no-ops in a single process -------------------------------
    par = distributed.current()
    distributed.check_supported(cfg)
    global_batch = distributed.global_batch_cfg(cfg).batch_size  # batch_size x processes
    train_model = distributed.wrap(model)  # DDP wrapper / FSDP2 in place / model; before the optimizer
    trackers = setup.trackers if par.is_main else []
    # -----------------------------------------------------------------------------------------------------
    n_train = len(train_samples) if train_stream is None else 0  # a stream has no length: max_steps is set
    total_steps = total_steps_for(distributed.global_batch_cfg(cfg), n_train)
    micro_per_epoch = math.ceil(n_train / global_batch)
    optim = recipe.optim or OptimCfg()
    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay, device, optim)
    regulariser = build_regulariser(optim, model, run_dir, train_samples, collate_fn, loss_fn, device, cfg.seed,
                                    recipe.reference_data)
    scheduler = build_scheduler(optimizer, cfg.scheduler, total_steps, cfg.warmup_ratio)
    precision = Precision(cfg.precision, device)  # autocast and fp16 loss scaling (engine/precision.py)
    if precision.scaler is not None and par.distributed:
        raise ValueError("train.precision: fp16 loss scaling runs in one process for now; use bf16 or fp32 with "
                         "torchrun")
    autocast = precision.autocast
    loss_scale = precision.scale if precision.scaler is not None else None

    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "config"):
            model.config.use_cache = False

    pos = {"micro_index": 0, "tokens": 0, "best_eval": None, "best_step": None, "bad_evals": 0, "elapsed_s": 0.0}
    step = 0
    resume_from = _resume_target(cfg.resume, run_dir)
    if resume_from is not None:
        with unwrapped(model):  # PEFT finds adapters by module path: fast-path wrappers out of the way
            if par.distributed or (resume_from / "dcp").is_dir():  # written or read by several processes
                saved = load_any_checkpoint(resume_from, model, method, optimizer, scheduler)
            else:
                saved = load_checkpoint(resume_from, model, method, optimizer, scheduler)
        step = saved.pop("step")
        pos.update(saved)
        precision.load(pos)
        if par.is_main:
            _trim_metrics(RunFolder(run_dir).metrics_path, step)

    bar = TrainProgress(total_steps, start_step=step, enabled=progress and par.is_main)
    if resume_from is not None:
        bar.note(f"resumed from {resume_from} at step {step}")
    stream = (micro_batches(train_samples, global_batch, cfg.seed, pos["micro_index"], order_fn)
              if train_stream is None else train_stream(global_batch, pos))
    params = [p for p in model.parameters() if p.requires_grad]
    stopped, last_eval, last_loss = "completed", None, None
    # named eval sets (multi-task) are reported one by one; a plain list is one unnamed set, logged as before
    named = isinstance(val_samples, Mapping)
    eval_sets = dict(val_samples) if named else {"all": val_samples}
    has_val = any(len(v) for v in eval_sets.values())
    perplexity = has_val and has_perplexity(loss_fn, collate_fn, next(v for v in eval_sets.values() if len(v)))
    last_by_set: dict[str, float] = {}
    flag: dict = {}
    # Ahead mode (train.speed.prefetch, CUDA by default): batches pinned and copied non_blocking, and the
    # step's loss and grad norm stay on the device until a readback (every log_every steps, evals,
    # checkpoints, the end), so the host never waits for the GPU in between. Its NaN guard runs on the
    # device too: with fused AdamW a non-finite loss sets the optimizer's `found_inf` (the AMP grad-scaler
    # protocol), which skips that update and every later one, and the readback raises TrainingDiverged.
    ahead = cfg.speed.wants("prefetch", device.type) and not par.distributed and train_stream is None
    device_guard = ahead and bool(getattr(optimizer, "defaults", {}).get("fused")) and precision.scaler is None
    bad = torch.zeros((), dtype=torch.float32, device=device) if device_guard else None
    pending: list[tuple[int, object, object, int, float]] = []  # (step, loss, grad_norm, tokens, lr) not read yet
    for key in ("loss_tokens", "eval_s", "train_s"):
        pos.setdefault(key, 0.0 if key.endswith("_s") else 0)
    first_step_s = None
    model.train()
    t_start = time.perf_counter() - pos["elapsed_s"]
    t_loop = t_window = time.perf_counter()
    window_tokens = 0

    def log(metrics: dict) -> None:
        for t in trackers:
            t.log(metrics, step)

    def checkpoint() -> Path:
        pos["elapsed_s"] = time.perf_counter() - t_start
        pos.update(precision.state())
        with unwrapped(model):
            if par.distributed:
                return save_any_checkpoint(run_dir, step, model, method, optimizer, scheduler, dict(pos),
                                           keep=cfg.save_total_limit)
            return save_checkpoint(run_dir, step, model, method, optimizer, scheduler, dict(pos),
                                   keep=cfg.save_total_limit)

    def readback() -> dict:
        """Read the pending steps' values (one wait for the GPU); log and show them; raise on a bad loss."""
        nonlocal last_loss, t_window, window_tokens
        if not pending:
            return {}
        values = _as_floats([v for _, loss, gn, _, _ in pending for v in (loss, gn)])
        now = time.perf_counter()
        pos["train_s"] += now - t_window
        rate = window_tokens / max(now - t_window, 1e-9)
        metrics: dict = {}
        for i, (at, _, _, tokens, lr) in enumerate(pending):
            loss, gn = values[2 * i], values[2 * i + 1]
            if not math.isfinite(loss):
                raise _diverged(loss, at, run_dir)
            metrics = {"epoch": _epochs(pos, micro_per_epoch), "loss": loss, "lr": lr, "grad_norm": gn,
                       "tokens": tokens, "tokens_per_s": rate,
                       "elapsed_s": round(now - t_start, 3), **step_extra}
            if device.type == "cuda":
                metrics["mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
            last_loss = loss
            if at % cfg.log_every == 0 or at == total_steps:
                for t in trackers:
                    t.log(metrics, at)
        pending.clear()
        bar.update(step, metrics)
        t_window, window_tokens = time.perf_counter(), 0
        return metrics

    step_extra: dict = {}
    with _signals_to_flag(flag):
        while step < total_steps:
            batches, pads = [], []
            n_inputs = 0
            for _ in range(cfg.grad_accum):
                pos["micro_index"], samples = next(stream)
                if par.distributed:  # this rank's share of the global micro-batch
                    samples, pad = distributed.shard(samples)
                    pads.append(pad)
                batch, n = prepare_batch(collate_fn(samples), device, ahead)
                batches.append(batch)
                n_inputs += n if not (par.distributed and pads[-1]) else 0
            pos["micro_index"] += 1
            extra: dict = {}
            if par.distributed:  # normalized by the token count of every rank's batches
                loss, n_targets = distributed.accumulate(train_model, batches, pads, loss_fn, autocast, extra)
            else:
                loss, n_targets = accumulate_gradients(model, batches, loss_fn, autocast, extra, sync=not ahead,
                                                       scale=loss_scale)
            if regulariser is not None:  # its gradient joins the step's (the logged loss stays the task loss)
                precision.scale(regulariser.penalty()).backward()  # scaled like the loss: unscale_ divides both
            if device_guard:  # no wait: a non-finite loss skips this update and all later ones (found_inf)
                bad = torch.maximum(bad, (~torch.isfinite(loss)).float())
                optimizer.found_inf = bad
            elif not math.isfinite(float(loss)):
                raise _diverged(float(loss), step + 1, run_dir)
            precision.unscale(optimizer)  # fp16: true gradients before clipping
            if par.fsdp:  # sharded gradients: the norm needs every shard
                grad_norm = distributed.grad_norm(params, cfg.max_grad_norm)
            elif cfg.max_grad_norm:
                grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            else:
                grad_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))
            lr = scheduler.get_last_lr()[0]
            precision.step(optimizer)  # fp16: skipped (and counted) when the gradients overflowed
            extra.update(precision.metrics())
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if par.distributed:
                n_inputs = distributed.all_sum(n_inputs)
            pos["tokens"] += n_inputs
            pos["loss_tokens"] += n_targets
            window_tokens += n_inputs
            step_extra = extra
            pending.append((step, loss, grad_norm, pos["tokens"], lr))

            at_end = step == total_steps
            evaluating = has_val and ((cfg.eval_every and step % cfg.eval_every == 0) or at_end)
            saving = cfg.save_every and step % cfg.save_every == 0 and not at_end
            if (not ahead or step % cfg.log_every == 0 or at_end or evaluating or saving or first_step_s is None
                    or flag.get("signal")):
                metrics = readback()
                if first_step_s is None:  # compilation and the first batch: reported apart from the steady rate
                    first_step_s = time.perf_counter() - t_loop
                    if "steady_from" not in pos:  # a resumed run keeps its first run's figures
                        pos["first_step_s"] = round(first_step_s, 3)
                        pos["steady_from"] = [pos["tokens"], pos["train_s"]]
            if evaluating:
                t_eval = time.perf_counter()
                eval_extra: dict = {}
                last_eval, last_by_set = evaluate_sets(model, eval_sets, collate_fn, loss_fn, cfg.batch_size, device,
                                                       autocast, eval_extra, on_batch=bar.eval_progress(step))
                bar.eval_done()
                log(eval_log_line(last_eval, last_by_set if named else {}, eval_extra, perplexity))
                bar.update(step, {**metrics, "eval_loss": last_eval})
                if pos["best_eval"] is None or last_eval < pos["best_eval"] - 1e-6:
                    pos.update(best_eval=last_eval, best_step=step, bad_evals=0)
                    if cfg.early_stopping_patience:
                        with unwrapped(model):
                            distributed.save_weights(model, method, RunFolder(run_dir).best_dir)  # atomic, rank 0
                else:
                    pos["bad_evals"] += 1
                    if cfg.early_stopping_patience and pos["bad_evals"] >= cfg.early_stopping_patience:
                        stopped = "early_stopping"
                        bar.note(f"early stopping at step {step}: validation loss has not improved for "
                                 f"{pos['bad_evals']} evaluations "
                                 f"(best {pos['best_eval']:.4f} at step {pos['best_step']})")
                pos["eval_s"] += time.perf_counter() - t_eval
                t_window = time.perf_counter()  # the throughput window excludes evaluation
            if saving:
                checkpoint()
                t_window = time.perf_counter()
            if distributed.any_rank(flag.get("signal")):  # every rank stops at the same step
                path = checkpoint()
                bar.close()
                raise TrainingInterrupted(path)
            if stopped != "completed":
                break
    bar.close()
    distributed.barrier()
    restored_step = None  # the earlier step whose weights the run ends with (early stopping's best), if any
    if cfg.early_stopping_patience and RunFolder(run_dir).best_dir.is_dir() and pos["best_step"] != step:
        with unwrapped(model):
            method.load_state(model, RunFolder(run_dir).best_dir)
        restored_step = pos["best_step"]
    elapsed = time.perf_counter() - t_start
    train_s = max(pos["train_s"], 1e-9)  # training time only: evaluation and checkpoint writing excluded
    steady_tokens, steady_s = (pos["tokens"] - pos["steady_from"][0], pos["train_s"] - pos["steady_from"][1]) \
        if "steady_from" in pos else (0, 0.0)
    summary = {
        "steps": step, "epochs": _epochs(pos, micro_per_epoch), "train_loss": last_loss,
        "eval_loss": last_eval, "best_step": pos["best_step"], "best_eval_loss": pos["best_eval"],
        "restored_step": restored_step,
        "tokens": pos["tokens"], "loss_tokens": pos["loss_tokens"],
        "tokens_per_s": pos["tokens"] / train_s, "loss_tokens_per_s": pos["loss_tokens"] / train_s,
        "steady_tokens_per_s": steady_tokens / steady_s if steady_s > 0 else None,
        "first_step_s": pos.get("first_step_s"), "train_s": round(pos["train_s"], 3),
        "eval_s": round(pos["eval_s"], 3), "elapsed_s": round(elapsed, 3),
        "stopped": stopped if stopped != "completed" or not cfg.max_steps else "max_steps",
        "precision": precision.name, **({"skipped_steps": precision.skipped_steps} if precision.scaler else {}),
    }
    if named and last_by_set:
        summary["eval_loss_per_task"] = last_by_set
    return FitResult(step, summary["stopped"], summary)


def _as_floats(values: list) -> list[float]:
    """Python floats of a mix of floats and 0-dim tensors, with one device read for all the tensors."""
    tensors = [v.detach().float().reshape(()) for v in values if isinstance(v, torch.Tensor)]
    read = iter(torch.stack(tensors).tolist() if tensors else [])
    return [next(read) if isinstance(v, torch.Tensor) else float(v) for v in values]


def _epochs(pos: dict, micro_per_epoch: int) -> float:
    """Epochs done so far: from the micro-batch count, or a stream's own epoch counter (no length known)."""
    if "stream" in pos:
        return pos["stream"]["epoch"]
    return round(pos["micro_index"] / micro_per_epoch, 4)


def _resume_target(resume: str, run_dir: Path) -> Path | None:
    if resume == "never":
        return None
    if resume == "auto":  # the newest checkpoint that verifies; damaged newer ones are skipped with a warning
        return latest_valid_checkpoint(run_dir)
    path = Path(resume)
    if not path.is_dir():
        raise FileNotFoundError(f"train.resume: {resume} is not a checkpoint folder; use auto, never, "
                                f"or a path like {run_dir}/checkpoints/step-000100")
    return check_checkpoint(path)


def _trim_metrics(path: Path, step: int) -> None:
    """Drop metric lines logged after the checkpoint being resumed, so the curve has no duplicates."""
    import json

    if not path.is_file():
        return
    # Rewritten in place, not replaced: the jsonl tracker already holds this file open for appending.
    with open(path, "r+", encoding="utf-8") as f:
        keep = [line for line in f.read().splitlines() if line.strip() and json.loads(line).get("step", 0) <= step]
        f.seek(0)
        f.write("".join(line + "\n" for line in keep))
        f.truncate()
