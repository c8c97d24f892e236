"""Soft prompts through PEFT: the base model is frozen and learned vectors are put in front of the input.

- `prompt`: prompt tuning (Lester et al. 2021), trained input embeddings, initialised from text or at random;
- `ptuning`: P-tuning (Liu et al. 2021), those embeddings produced by a small MLP/LSTM prompt encoder;
- `prefix`: prefix tuning (Li & Liang 2021), key/value prefixes at every layer, trained through an MLP;
- `ptuning_v2`: P-tuning v2 (Liu et al. 2022), the same deep prefixes trained directly.

None of them is a change of the weights, so none can be merged: serve the base model with the adapter.
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import (
    PrefixTuningConfig,
    PromptEncoderConfig,
    PromptEncoderReparameterizationType,
    PromptTuningConfig,
    PromptTuningInit,
)

from safetensors.torch import load_file

from tunelab.methods import NotMergeable, peft_io
from tunelab.methods.peft_io import load_state, save

__all__ = ["WEIGHTS_DIR", "apply", "load_for_inference", "load_state", "merge", "save"]

WEIGHTS_DIR = "adapter"


def _prompt(cfg, model):
    # text initialisation is done in `init_from_text` with tunelab's own tokenizer resolution
    return PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=cfg.num_virtual_tokens,
                              prompt_tuning_init=PromptTuningInit.RANDOM)


def init_from_text(peft_model, base_embeddings, cfg) -> None:
    """Set the soft prompt to the embeddings of cfg.init_text's tokens, repeated to num_virtual_tokens."""
    from tunelab.models import load_tokenizer

    source = cfg.tokenizer or getattr(peft_model.base_model.config, "_name_or_path", "")
    if not source:
        raise ValueError("method.tokenizer: this model has no folder to take a tokenizer from; set it to the "
                         "model name (e.g. method.tokenizer=tiny-llama) to initialise from method.init_text")
    ids = load_tokenizer(source)(cfg.init_text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError("method.init_text: encodes to no tokens; give some text or set it to null (random)")
    ids = (ids * (cfg.num_virtual_tokens // len(ids) + 1))[:cfg.num_virtual_tokens]
    with torch.no_grad():
        vectors = base_embeddings(torch.tensor(ids, device=base_embeddings.weight.device))  # (V, H)
        peft_model.prompt_encoder["default"].embedding.weight.copy_(vectors)


def _ptuning(cfg, model):
    kind = {"mlp": PromptEncoderReparameterizationType.MLP, "lstm": PromptEncoderReparameterizationType.LSTM}
    return PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=cfg.num_virtual_tokens,
                               encoder_reparameterization_type=kind[cfg.encoder],
                               encoder_hidden_size=cfg.encoder_hidden_size)


def _prefix(cfg, model):
    return PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=cfg.num_virtual_tokens,
                              prefix_projection=True, encoder_hidden_size=cfg.encoder_hidden_size)


def _ptuning_v2(cfg, model):
    return PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=cfg.num_virtual_tokens,
                              prefix_projection=False)


CONFIGS = {"prompt": _prompt, "ptuning": _ptuning, "prefix": _prefix, "ptuning_v2": _ptuning_v2}


def apply(model, cfg):
    """Freeze the base and add the soft prompt of the configured kind (warm-started from `cfg.init_from`)."""
    embeddings = model.get_input_embeddings()
    peft_model = peft_io.peft_model(model, CONFIGS[cfg.name](cfg, model))
    if cfg.name == "prompt" and cfg.init_text:
        init_from_text(peft_model, embeddings, cfg)
    if getattr(cfg, "init_from", None):
        warm_start(peft_model, cfg)
    return align_logits(peft_model)


WARM_STARTABLE = ("prompt", "prefix", "ptuning_v2")


def saved_prompt(run_dir: str | Path, method: str) -> torch.Tensor:
    """The trained prompt vectors of a finished run of `method`: PEFT's `prompt_embeddings`, (n_virtual, D)
    with D the hidden size (prompt tuning) or layers * 2 * key/value width (prefix, P-tuning v2)."""
    from tunelab.runfolder import RunFileError, RunFolder

    key = "method.init_from"
    folder = RunFolder(run_dir)
    try:
        other = folder.read_config().method.name if folder.config_path.is_file() else None
    except RunFileError as e:
        raise ValueError(f"{key}: {e}") from None
    if other is None:
        raise ValueError(f"{key}: {run_dir} is not a run folder (no config.yaml); give the folder tunelab train wrote")
    if other != method:
        raise ValueError(f"{key}: {run_dir} was trained with method {other!r}, this run uses {method!r}; "
                         f"warm-start from a {method} run (or set method.name={other})")
    weights = folder.weights_path(method) / "adapter_model.safetensors"
    if not weights.is_file():
        raise ValueError(f"{key}: {run_dir} has no trained prompt ({weights} is missing); did its training finish?")
    state = load_file(str(weights))
    if "prompt_embeddings" not in state:
        raise ValueError(f"{key}: {weights} holds no prompt_embeddings; it is not a {method} adapter")
    return state["prompt_embeddings"]


@torch.no_grad()
def warm_start(peft_model, cfg) -> None:
    """Start the soft prompt from `cfg.init_from`'s trained one (cross-lingual or cross-task transfer).

    Prompt tuning and P-tuning v2 train the saved vectors themselves: they are copied. Prefix tuning
    trains them through an MLP (embedding -> tanh -> linear); its last layer is solved by least squares
    so that the MLP outputs the saved prefix exactly at the start (one hidden direction per virtual
    token, hence encoder_hidden_size >= num_virtual_tokens), and training goes on through the MLP.
    """
    if cfg.name not in WARM_STARTABLE:
        raise ValueError(f"method.init_from: {cfg.name} cannot be warm-started; use one of "
                         f"{', '.join(WARM_STARTABLE)}")
    saved = saved_prompt(cfg.init_from, cfg.name)
    current = peft_model.get_prompt_embedding_to_save("default")
    if tuple(saved.shape) != tuple(current.shape):
        n, d = tuple(saved.shape)
        fix = (f"set method.num_virtual_tokens={n}" if n != current.shape[0]
               else "use the same base model (its width and layer count set that size)")
        raise ValueError(f"method.init_from: {cfg.init_from}'s prompt is {n} x {d}, this run's is "
                         f"{current.shape[0]} x {current.shape[1]}; {fix}")
    encoder = peft_model.prompt_encoder["default"]
    target = saved.to(encoder.embedding.weight.device, encoder.embedding.weight.dtype)
    if getattr(encoder, "prefix_projection", False):
        first, last = encoder.transform[0], encoder.transform[-1]
        ids = torch.arange(target.shape[0], device=target.device)
        hidden = torch.tanh(first(encoder.embedding(ids)))  # (n, encoder_hidden)
        last.bias.zero_()
        last.weight.copy_(torch.linalg.lstsq(hidden.double(), target.double()).solution.T.to(last.weight.dtype))
    else:
        encoder.embedding.weight.copy_(target)


def load_for_inference(base_model, out_dir):
    """The base model with the run's soft prompt attached; logits aligned with the input positions."""
    return align_logits(peft_io.load_for_inference(base_model, out_dir))


def _drop_virtual_positions(module, args, kwargs, output):
    """Forward hook: PEFT returns logits for the virtual tokens too when they are prepended to the input
    (prompt tuning, P-tuning); drop them so logits[:, t] belongs to input token t as for every other method."""
    ids = kwargs.get("input_ids", args[0] if args else None)
    n_virtual = module.peft_config[module.active_adapter].num_virtual_tokens
    logits = getattr(output, "logits", None)
    if ids is not None and logits is not None and logits.shape[1] == ids.shape[1] + n_virtual:
        output.logits = logits[:, n_virtual:]
    return output


def align_logits(peft_model):
    """Register _drop_virtual_positions on models whose virtual tokens occupy input positions."""
    if peft_model.peft_config[peft_model.active_adapter].peft_type.value != "PREFIX_TUNING":
        peft_model.register_forward_hook(_drop_virtual_positions, with_kwargs=True)
    return peft_model


def merge(model):
    """Soft prompts are extra inputs, not weight changes: there is nothing to fold in."""
    kind = getattr(getattr(model, "peft_config", {}).get("default"), "peft_type", "prompt")
    raise NotMergeable(f"{getattr(kind, 'value', kind)} adds learned prompt vectors to every input; they cannot be "
                       "folded into the base weights. Serve the base model with the adapter folder instead "
                       "(Run.load_model() without merged=True, or PeftModel.from_pretrained(base, run/'adapter')).")
