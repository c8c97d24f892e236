"""One rank of the 2-process tests (run by torchrun): train every scenario, save weights and what it saw.

Usage: torchrun --standalone --nproc-per-node 2 tests/engine/worker.py OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from tunelab.config.parallel import ParallelCfg
from tunelab.data.pipeline import epoch_order
from tunelab.engine import distributed
from tunelab.engine.loop import fit
from tunelab.engine.recipe import Recipe, Setup
from tunelab.methods import get_method
from tunelab.models import load_tokenizer
from tunelab.training.lm_loss import sft_loss

sys.path.insert(0, str(Path(__file__).parent))
from common import (
    PER_RANK_BATCH,
    SCENARIOS,
    make_model,
    make_samples,
    recording_collate,
    train_cfg,
)


def main(out: Path) -> None:
    samples = make_samples(load_tokenizer("tiny-llama"))
    for name, (strategy, method_name) in SCENARIOS.items():
        distributed.init(ParallelCfg(strategy=strategy), torch.device("cpu"))
        par = distributed.current()
        method = get_method(method_name)
        model = make_model(method_name)
        seen: list = []
        pads: list = []
        collate_fn = recording_collate(samples, seen)
        real_shard = distributed.shard

        def shard(batch, _real=real_shard, pads=pads):
            mine, pad = _real(batch)
            pads.append(pad)
            return mine, pad

        distributed.shard = shard
        try:
            result = fit(Setup(model, method, out / name, torch.device("cpu"), []),
                         Recipe(train=train_cfg(PER_RANK_BATCH), samples=samples, val=[], collate=collate_fn,
                                loss=sft_loss, order=epoch_order), progress=False)
        finally:
            distributed.shard = real_shard
        distributed.save_weights(model, method, out / name / "final")
        record = {"rank": par.rank, "world": par.world_size, "seen": seen, "pads": pads, "summary": result.summary}
        (out / name / f"rank-{par.rank}.json").write_text(json.dumps(record))
    distributed.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
