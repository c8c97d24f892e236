"""Self-training, two ways (``selftrain.mode``).

``pseudo_label`` (the default): a classifier trained on a few labels labels an unlabelled pool, its confident
predictions join the training data, and it is trained again, round after round
(``tunelab.stages.selftrain.pseudo_label``).

``rejection`` (``tunelab.stages.selftrain.rejection``): sample answers from the model, keep those a reward
judges good, fine-tune on them.
Rejection-sampling fine-tuning (STaR, Zelikman et al. 2022; RFT, Yuan et al. 2023): for every training
prompt the model (as it is before this stage) samples ``samples_per_prompt`` answers; the reward functions
(the same ones as GRPO, ``tunelab.training.rewards``) score them; answers reaching ``min_reward`` are kept
(the best one per prompt, or all) and the model is trained on them with the SFT loss. Validation uses the
data's own reference answers, so ``eval_loss`` says how close the model stays to them.

The run folder gets ``selftrain_samples.jsonl`` (every sample, its rewards and whether it was kept) and
``selftrain_data.jsonl`` (the kept conversations, in messages format, reusable as SFT data).
"""

from __future__ import annotations

from collections.abc import Callable

from tunelab.stages.selftrain import pseudo_label, rejection

MODES: dict[str, Callable] = {"pseudo_label": pseudo_label.run, "rejection": rejection.run_rejection}


def run(cfg, progress: bool = True):
    """Self-train the way ``selftrain.mode`` names; return the run folder path."""
    return MODES[cfg.selftrain.mode](cfg, progress)
