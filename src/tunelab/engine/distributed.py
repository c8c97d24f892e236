"""Several processes, one run: the process group, rank info, data shards, DDP and FSDP2 wrapping.

torchrun starts the processes and sets RANK / WORLD_SIZE / LOCAL_RANK; `init` joins the
process group it describes (nccl on CUDA, gloo on CPU). Everything here is a no-op in a
single process, so the loop calls it unconditionally and single-process training is unchanged.

Batch semantics: `train.batch_size` is per process. One *global* micro-batch of
batch_size x processes samples is drawn in the same seeded order a single process would use,
and each rank takes a strided share of it (`shard`). The loss is normalized by the target
tokens of every rank's micro-batches (`accumulate`, an all-reduced count), so N processes
give the gradient of one process training on the whole global batch.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import itertools
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import torch
import torch.distributed as dist

from tunelab.config.loader import ConfigError
from tunelab.config.parallel import ParallelCfg
from tunelab.engine.loss import add_metrics, loss_count, mean_metrics
from tunelab.utils.io import atomic_dir


@dataclass
class Parallel:
    """This process's place in the run. `strategy` is "none" whenever there is a single process."""

    strategy: str = "none"
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    cfg: ParallelCfg = field(default_factory=ParallelCfg)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    mesh: object = None
    shadow: torch.nn.Module | None = None  # fsdp, rank 0: a data-free copy of the unsharded model, for saving

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def fsdp(self) -> bool:
        return self.distributed and self.strategy == "fsdp"

    @property
    def label(self) -> str:
        """"[rank R/N] " in a distributed run (prefix for messages), "" otherwise."""
        return f"[rank {self.rank}/{self.world_size}] " if self.distributed else ""


_STATE = Parallel()


def current() -> Parallel:
    """The process's Parallel (single-process defaults until `init` joined a process group)."""
    return _STATE


def launched_world() -> tuple[int, int, int]:
    """(world_size, rank, local_rank) from torchrun's environment; (1, 0, 0) when not launched by it."""
    env = os.environ
    return int(env.get("WORLD_SIZE", "1")), int(env.get("RANK", "0")), int(env.get("LOCAL_RANK", "0"))


def init(cfg: ParallelCfg | None, device: torch.device) -> torch.device:
    """Join the process group torchrun describes (if more than one process) and return this rank's device.

    On CUDA each process takes `cuda:LOCAL_RANK`. Calling it again (another run in the same processes)
    keeps the process group and only switches the strategy.
    """
    global _STATE
    cfg = cfg or ParallelCfg()
    world, rank, local = launched_world()
    if world <= 1:
        _STATE = Parallel(cfg=cfg, device=device)
        return device
    if cfg.strategy == "none":
        raise ConfigError([(f"parallel.strategy: none, but the run was launched with {world} processes; "
                            "set parallel.strategy=ddp or parallel.strategy=fsdp, or launch a single process")])
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    backend = cfg.backend if cfg.backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=cfg.timeout_minutes))
    mesh = None
    if cfg.strategy == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh(device.type, (world,))
    _STATE = Parallel(cfg.strategy, rank, world, local, cfg, device, mesh)
    _prefix_uncaught_errors(_STATE.label)
    return device


def shutdown() -> None:
    """Wait for every rank, then leave the process group (no-op in a single process)."""
    global _STATE
    if _STATE.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    _STATE = Parallel()


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if _STATE.distributed:
        dist.barrier()


def _prefix_uncaught_errors(label: str) -> None:
    """Make a crash name its rank: the traceback of an uncaught exception starts with "[rank R/N]"."""
    previous = sys.excepthook

    def hook(kind, value, tb):
        sys.stderr.write(f"{label}failed with {kind.__name__}: {value}\n")
        previous(kind, value, tb)

    sys.excepthook = hook


def _comm_device() -> torch.device:
    return _STATE.device if dist.get_backend() == "nccl" else torch.device("cpu")


def all_sum(value: float) -> float | int:
    """The sum of `value` over every rank (the value itself in a single process)."""
    if not _STATE.distributed:
        return value
    is_int = isinstance(value, int)
    t = torch.tensor(value, dtype=torch.int64 if is_int else torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return int(t) if is_int else float(t)


def any_rank(flag: bool) -> bool:
    """True if `flag` is true on any rank, so every rank takes the same branch (e.g. stop on a signal)."""
    if not _STATE.distributed:
        return bool(flag)
    t = torch.tensor(int(bool(flag)), device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t)


def shard(samples: Sequence, rank: int | None = None, world_size: int | None = None) -> tuple[list, bool]:
    """This rank's share of a global micro-batch: samples rank, rank + N, rank + 2N, ...

    Returns (samples, is_pad). A rank left without samples (the last, short micro-batch of an epoch)
    gets the first sample as padding with is_pad=True: it still runs forward and backward, which DDP and
    FSDP need on every rank, but its loss is multiplied by zero and its tokens are not counted.
    """
    rank = _STATE.rank if rank is None else rank
    world_size = _STATE.world_size if world_size is None else world_size
    mine = list(samples[rank::world_size])
    if mine:
        return mine, False
    return [samples[0]], True


def global_batch_cfg(cfg):
    """The TrainCfg with batch_size = the global micro-batch (per-process batch_size x processes)."""
    if not _STATE.distributed:
        return cfg
    return cfg.model_copy(update={"batch_size": cfg.batch_size * _STATE.world_size})


def check_supported(cfg) -> None:
    """Refuse settings the chosen strategy does not support yet, naming the key."""
    if _STATE.fsdp and cfg.early_stopping_patience:
        raise ConfigError([("train.early_stopping_patience: not supported with parallel.strategy=fsdp yet; "
                            "use parallel.strategy=ddp, or drop early stopping")])


def wrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module to run forward/backward through: DDP(model), the FSDP2-sharded model, or model itself.

    FSDP2 shards in place (`model` becomes the sharded module) so the optimizer must be built after
    this call. Each decoder layer is its own FSDP unit, then the root. After wrapping, each rank reseeds
    with seed + rank so dropout differs between ranks (initialisation already happened identically).
    """
    if not _STATE.distributed:
        return model
    cfg = _STATE.cfg
    if _STATE.strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        cuda = _STATE.device.type == "cuda"
        wrapped = DistributedDataParallel(model, device_ids=[_STATE.device.index] if cuda else None,
                                          find_unused_parameters=cfg.find_unused_parameters)
    else:
        wrapped = _fully_shard(model, cfg)
    torch.manual_seed(torch.initial_seed() + _STATE.rank)
    return wrapped


def _fully_shard(model: torch.nn.Module, cfg: ParallelCfg) -> torch.nn.Module:
    from torch.distributed.fsdp import (
        CPUOffloadPolicy,
        MixedPrecisionPolicy,
        OffloadPolicy,
        fully_shard,
    )

    from tunelab.methods import decoder_layers

    if _STATE.is_main:
        _STATE.shadow = _meta_copy(model)
    bf16 = cfg.mixed_precision == "bf16" or (
        cfg.mixed_precision == "auto" and _STATE.device.type == "cuda" and torch.cuda.is_bf16_supported())
    options = {
        "mesh": _STATE.mesh,
        "reshard_after_forward": cfg.reshard_after_forward,
        "mp_policy": MixedPrecisionPolicy(param_dtype=torch.bfloat16 if bf16 else None, reduce_dtype=torch.float32),
        "offload_policy": CPUOffloadPolicy() if cfg.cpu_offload else OffloadPolicy(),
    }
    _, layers = decoder_layers(model)
    for layer in layers:
        fully_shard(layer, **options)
    fully_shard(model, **options)
    return model


def _meta_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of `model`'s structure whose tensors live on the meta device (no memory)."""
    memo: dict = {}
    for t in itertools.chain(model.parameters(), model.buffers()):
        meta = torch.empty_like(t, device="meta")
        memo[id(t)] = torch.nn.Parameter(meta, requires_grad=t.requires_grad) if isinstance(
            t, torch.nn.Parameter) else meta
    return copy.deepcopy(model, memo)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module under a DDP wrapper (FSDP2 modules are their own unwrapped form)."""
    return getattr(model, "module", model) if type(model).__name__ == "DistributedDataParallel" else model


def consolidated(model: torch.nn.Module) -> torch.nn.Module | None:
    """The model with full (unsharded) weights on CPU, on rank 0; None on other ranks.

    Every rank must call it (it all-gathers). Without FSDP it is `model` itself on every rank.
    """
    if not _STATE.fsdp:
        return unwrap(model)
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
    )

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not _STATE.is_main:
        return None
    _STATE.shadow.load_state_dict(full, assign=True)
    return _STATE.shadow


def save_weights(model: torch.nn.Module, method: ModuleType, out_dir: Path) -> None:
    """Write the method's weights (HF/PEFT folder) atomically from rank 0; every rank must call it."""
    source = consolidated(model)
    if _STATE.is_main:
        with atomic_dir(out_dir) as tmp:
            method.save(source, tmp)
    barrier()


def grad_norm(params: list, max_norm: float | None) -> float:
    """Clip FSDP2's sharded gradients to `max_norm` (if set) and return the global norm before clipping."""
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm or float("inf"))
    if hasattr(norm, "full_tensor"):  # a DTensor: the norm over every shard
        norm = norm.full_tensor()
    return float(norm)


def _sync_gradients(model, sync: bool):
    """Skip the gradient all-reduce on all but the last micro-batch (it happens once per step)."""
    if hasattr(model, "no_sync"):  # DDP
        return contextlib.nullcontext() if sync else model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(sync)
    return contextlib.nullcontext()


def accumulate(model, batches: list[dict], pads: list[bool], loss_fn, autocast,
               metrics: dict | None = None) -> tuple[float, int]:
    """Distributed twin of `loop.accumulate_gradients`: backpropagate this rank's micro-batches.

    Each summed loss is divided by the target tokens of *every* rank's micro-batches (all-reduced), then
    multiplied by the number of processes because DDP and FSDP average gradients over processes: the
    result is the gradient of the whole global batch with one token-normalized loss. Returns the global
    (mean loss per target token, target tokens).
    """
    local = sum(0 if pad else loss_count(b) for b, pad in zip(batches, pads))
    n_tokens = all_sum(local)
    if n_tokens == 0:
        raise ValueError("an accumulated batch has no target tokens; check the data's label masks")
    scale = _STATE.world_size / n_tokens
    total = 0.0
    for i, (b, pad) in enumerate(zip(batches, pads)):
        with _sync_gradients(model, sync=i == len(batches) - 1):
            with autocast():
                out = loss_fn(model, b)
            loss_sum, count = out[0], out[1]
            if pad:
                loss_sum, count = loss_sum * 0.0, 0
            (loss_sum * scale).backward()
        total += float(loss_sum.detach())
        if not pad:
            add_metrics(metrics, out[2] if len(out) > 2 else None, count)
    if metrics is not None:
        mean_metrics(metrics)
    return all_sum(total) / n_tokens, n_tokens


__all__ = ["Parallel", "accumulate", "all_sum", "any_rank", "barrier", "check_supported", "consolidated", "current",
           "global_batch_cfg", "grad_norm", "init", "launched_world", "save_weights", "shard", "shutdown", "unwrap",
           "wrap"]
