"""What a stage hands the training loop: a `Setup` (what is trained, and where) and a `Recipe` (on what, how).

`engine.loop.fit(setup, recipe)` is the one entry point. A stage builds both from what it holds in memory
(its config sections, its samples, its collator and loss); nothing is read back from the run folder.

    result = fit(setup, Recipe(train=cfg.train, optim=cfg.optim, samples=train, val=val,
                               collate=partial(collate, pad_id=tok.pad_token_id), loss=my_loss,
                               reference_data=my_loader))
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch

from tunelab.config.optim import OptimCfg
from tunelab.config.schema import TrainCfg
from tunelab.data.pipeline import epoch_order

LossFn = Callable[[torch.nn.Module, dict], tuple]
"""loss(model, batch) -> (summed loss tensor, number of target tokens in the batch), optionally with a third
element: a dict of scalar metrics for that batch (e.g. rewards/margins), logged as count-weighted means."""

OrderFn = Callable[[int, int, int], list[int]]
"""order(n_samples, seed, epoch) -> the sample order of that epoch (a permutation fixed by seed and epoch)."""

StreamFn = Callable[[int, dict], Iterator[tuple[int, list]]]
"""stream(batch_size, pos) -> (micro_index, samples) from the position in `pos`; keeps its place in pos["stream"]."""


@dataclass
class Setup:
    """What is trained and where: the model (already prepared by `method.apply`), its method (saves and loads the
    trained part), the run folder that receives checkpoints and metrics, the device and the trackers.

    `tunelab.training.setup.RunSetup` is one, with the run's config, tokenizer and template added.
    """

    model: torch.nn.Module
    method: ModuleType
    run_dir: Path
    device: torch.device
    trackers: list


@dataclass
class Recipe:
    """How to train: the data, how it is batched and scored, and the run's `train` and `optim` settings.

    - `samples`: the training samples (a list); or `stream`, which then replaces them (data.streaming).
    - `val`: one validation list, or named sets (a multi-task run's tasks): each set's loss is then logged as
      eval_loss/<name> beside the overall eval_loss, which early stopping and best_step follow.
    - `collate(samples) -> batch` and `loss(model, batch)` (see `LossFn`); a collator whose loss is a mean over
      pairs or examples sets the batch's `loss_count` (engine.loss.LOSS_COUNT_KEY).
    - `order`: each epoch's sample order (default `data.pipeline.epoch_order`, so a resumed run replays it).
    - `train`, `optim`: the run's config sections, from memory (never re-read from the run folder);
      `optim=None` means the defaults.
    - `reference_data(path)`: turns a data file into this stage's own samples, for `optim.ewc.data`, so a
      regulariser sees the same kind of batches as training.
    """

    train: TrainCfg
    collate: Callable[[list], dict]
    loss: LossFn
    samples: Sequence = ()
    val: Sequence | Mapping[str, Sequence] = ()
    stream: StreamFn | None = None
    order: OrderFn = epoch_order
    optim: OptimCfg | None = None
    reference_data: Callable[[str], Sequence] | None = None
