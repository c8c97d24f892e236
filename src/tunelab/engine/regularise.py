"""Regularisers added to the training loss. Elastic weight consolidation (Kirkpatrick et al. 2017,
arXiv:1612.00796), usable with any method.

    penalty(theta) = lambda / 2 * sum_i F_i * (theta_i - theta*_i)^2

theta* are the trainable weights before fine-tuning and F the diagonal empirical Fisher on a
reference dataset (the "old task"): the mean over samples of the squared gradient of each sample's
mean token loss. Weights that mattered for the reference data are held near their start; the rest
move freely. The engine adds the penalty's gradient to every optimizer step.

The reference state is written to `<run>/ewc.safetensors` when first computed and read back on
resume, so a resumed run is anchored to the same weights.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tunelab.runfolder import EWC_STATE_FILE, RunFolder

STATE_FILE = EWC_STATE_FILE


class EWC:
    """The penalty over named trainable parameters, given their Fisher diagonal and reference values."""

    def __init__(self, params: dict[str, torch.nn.Parameter], fisher: dict[str, torch.Tensor],
                 reference: dict[str, torch.Tensor], lambda_: float):
        self.params, self.fisher, self.reference, self.lambda_ = params, fisher, reference, lambda_

    def penalty(self) -> torch.Tensor:
        """lambda/2 * sum F (theta - theta*)^2, a scalar tensor that backpropagates into the parameters."""
        total = sum(((self.params[n] - self.reference[n]) ** 2 * self.fisher[n]).sum() for n in self.params)
        return 0.5 * self.lambda_ * total


def diagonal_fisher(model, samples: Sequence, collate_fn, loss_fn: Callable, device) -> dict[str, torch.Tensor]:
    """Mean over samples of (d mean-token-loss / d theta)^2 for every trainable parameter (one sample at a time)."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    was_training = model.training
    model.eval()  # no dropout: the Fisher of the model as it is
    for sample in samples:
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in collate_fn([sample]).items()}
        model.zero_grad(set_to_none=True)
        loss_sum, n = loss_fn(model, batch)[:2]  # a loss may also return a metrics dict
        (loss_sum / max(n, 1)).backward()
        for name, p in params.items():
            if p.grad is not None:
                fisher[name] += p.grad.detach().float() ** 2 / len(samples)
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return fisher


def reference_samples(cfg, train_samples: Sequence, reference_data: Callable[[str], Sequence] | None = None
                      ) -> Sequence:
    """cfg.samples samples of the reference data: cfg.data read by the stage's own loader, or the train set.

    The samples come from the stage (its tokenizer, template, max_length and sample type), so the Fisher is
    computed on the same kind of batches the stage trains on: pairs for a preference stage, chats for SFT.
    """
    if cfg.data is None:
        return list(train_samples)[:cfg.samples]
    if reference_data is None:
        from tunelab.config import ConfigError

        raise ConfigError([f"optim.ewc.data: this stage cannot read reference data ({cfg.data}); leave it null "
                           "to estimate the Fisher on the training data"])
    return list(reference_data(cfg.data))[:cfg.samples]


def build_ewc(cfg, model, run_dir: Path, train_samples: Sequence, collate_fn, loss_fn: Callable, device,
              seed: int = 0, reference_data: Callable[[str], Sequence] | None = None) -> EWC:
    """The EWC penalty for this run: reuse <run>/ewc.safetensors when resuming, else estimate and store it.

    `reference_data(path)` is the stage's loader for cfg.data (see reference_samples); `seed` is unused since
    the samples are the stage's, kept so existing callers keep working.
    """
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    path = RunFolder(run_dir).ewc_state_path
    if path.is_file():
        state = load_file(str(path), device=str(device))
        fisher = {n: state[f"fisher.{n}"] for n in params}
        reference = {n: state[f"reference.{n}"] for n in params}
    else:
        samples = reference_samples(cfg, train_samples, reference_data)
        fisher = diagonal_fisher(model, samples, collate_fn, loss_fn, device)
        reference = {n: p.detach().clone() for n, p in params.items()}
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({**{f"fisher.{n}": t.contiguous() for n, t in fisher.items()},
                   **{f"reference.{n}": t.contiguous() for n, t in reference.items()}}, str(tmp))
        tmp.replace(path)  # atomic: a crash never leaves a half-written reference
    return EWC(params, fisher, reference, cfg.lambda_)
