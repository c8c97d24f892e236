"""Loading safetensors folders into live models (no pickle, ever)."""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file


BESIDE_MODEL = ("head.safetensors", "heads.safetensors")
"""Files saved beside a model's weights that are not part of it: the scoring or tagging head that
`tunelab.training.heads.HeadMethod` (or a multihead run's `MultiHeadMethod`) writes into the same folder
(the stage loads them, not this loader)."""


def load_safetensors_dir(model, folder: Path) -> None:
    """Copy every tensor of folder/*.safetensors into the model; missing keys must be tied weights."""
    files = sorted(f for f in Path(folder).glob("*.safetensors") if f.name not in BESIDE_MODEL)
    if not files:
        raise FileNotFoundError(f"{folder}: no .safetensors files to load")
    state = {}
    for f in files:
        state.update(load_file(str(f)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    tied |= set(getattr(model, "all_tied_weights_keys", None) or {})
    untied = [k for k in missing if k not in tied]
    if unexpected or untied:
        raise ValueError(f"{folder}: weights do not match the model (missing {untied[:5]}, unexpected {unexpected[:5]})")
