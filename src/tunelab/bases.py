"""Load any base model by name, a finished run folder included.

A finished run folder is a base model too (domain adaptation: `pretrain`, then `sft` with
`model.name: runs/<pretrain-run>`): its own base is loaded (recursively, so a run of a run works),
its trained part is merged into those weights, and its tokenizer and chat template are kept.
The next run then trains a fresh adapter (or all weights) on top of that merged model.

This needs both `models` (find and load the plain model underneath) and `methods` (rebuild and merge
the trained part), so it lives above both; `models` resolves run names, reads their chain
(`base_chain`, `root_model`) and loads their tokenizer, which needs only the run folder.
Every caller that takes a model name from a config or the command line loads it through here.
"""

from __future__ import annotations

import torch

from tunelab.methods import NotMergeable, get_method
from tunelab.models import ModelNotFound, pick_dtype, resolve_model
from tunelab.models import load_model as load_plain_model
from tunelab.models.loader import read_run_base

MAX_DEPTH = 32
"""Runs stacked as bases deeper than this are refused (a loop in model.name is the likely cause)."""


def load_model(name: str, dtype: str = "auto", device: torch.device | str = "cpu", trust_remote_code: bool = False,
               quantize: dict | None = None):
    """Load a causal LM by name (anything `tunelab.models.resolve_model` accepts) in `dtype` on `device`.

    A run folder loads as its base with the run's trained part merged in (a plain model, no adapter left);
    every other name goes to `tunelab.models.load_model` unchanged, `quantize` included (QLoRA's 4-bit
    loading; a run base is merged in full precision first, so it is quantized after loading instead).
    """
    src = resolve_model(name)
    if src.kind != "run":
        return load_plain_model(name, dtype, device, trust_remote_code, quantize=quantize)
    device = torch.device(device)
    return _load_run_model(src.path, dtype, device, trust_remote_code).to(pick_dtype(dtype, device)).to(device)


def _load_run_model(path: str, dtype: str, device: torch.device, trust_remote_code: bool, depth: int = 0):
    """A finished run's model with its trained part merged in, on top of its own (possibly run) base."""
    if depth > MAX_DEPTH:
        raise ModelNotFound(f"{path}: more than {MAX_DEPTH} runs stacked as bases; is there a loop in model.name?")
    run = read_run_base(path)
    src = resolve_model(run.base_name)
    if src.kind == "run":
        base = _load_run_model(src.path, dtype, device, trust_remote_code, depth + 1)
    else:
        base = load_plain_model(run.base_name, dtype, device, trust_remote_code)
    method = get_method(run.method)
    try:
        return method.merge(method.load_for_inference(base, run.weights))
    except NotMergeable as e:
        raise ModelNotFound(f"{run.path}: its {run.method} weights cannot be merged into the base, so it cannot be "
                            f"the base of another run ({e})") from None
