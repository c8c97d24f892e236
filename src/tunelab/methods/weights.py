"""Loading safetensors folders into live models (no pickle, ever)."""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file


BESIDE_MODEL = ("head.safetensors", "heads.safetensors")
"""Files saved beside a model's weights that are not part of it: the scoring or tagging head that
`tunelab.training.heads.HeadMethod` (or a multihead run's `MultiHeadMethod`) writes into the same folder
(the stage loads them, not this loader)."""


def load_safetensors_dir(model, folder: Path) -> None:
    """Copy every tensor of folder/*.safetensors into the model; missing keys must be tied weights.

    A folder written by `save_pretrained` (it has config.json) holds the checkpoint's original layout, which
    for many architectures is not the live model's (transformers 5 renames LLaVA's and Qwen2-VL's parts on
    load, and fuses MoE experts), so it is read back through `from_pretrained`, which converts it exactly as
    it does for a downloaded model; other folders are copied tensor by tensor.
    """
    files = sorted(f for f in Path(folder).glob("*.safetensors") if f.name not in BESIDE_MODEL)
    if not files:
        raise FileNotFoundError(f"{folder}: no .safetensors files to load")
    if (Path(folder) / "config.json").is_file() and hasattr(type(model), "from_pretrained"):
        state, not_loaded = _converted_state(model, Path(folder))
    else:
        state, not_loaded = {}, []
        for f in files:
            state.update(load_file(str(f)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    tied |= set(getattr(model, "all_tied_weights_keys", None) or {})
    untied = [k for k in [*not_loaded, *missing] if k not in tied]
    if unexpected or untied:
        raise ValueError(f"{folder}: weights do not match the model (missing {untied[:5]}, unexpected {unexpected[:5]})")


def _converted_state(model, folder: Path) -> tuple[dict, list[str]]:
    """(the folder's weights under the live model's names, the model keys the folder did not hold)."""
    dtype = next(model.parameters()).dtype
    loaded, info = type(model).from_pretrained(str(folder), dtype=dtype, local_files_only=True,
                                               output_loading_info=True)
    if info.get("unexpected_keys"):
        raise ValueError(f"{folder}: weights do not match the model (unexpected "
                         f"{sorted(info['unexpected_keys'])[:5]})")
    return loaded.state_dict(), sorted(info.get("missing_keys") or [])
