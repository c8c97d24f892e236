"""Find and load a base model and its tokenizer, offline: aliases, local folders, GGUF files, run folders, hub cache.

Nothing here downloads. A GGUF file is dequantized once and cached as a safetensors folder
(models/gguf.py) so later loads take a second, not fifteen.

A finished run folder is a model name too: it resolves here (kind "run"), its chain of bases is read
here (`base_chain`, `root_model`) and its tokenizer loads here. Its weights load with
`tunelab.bases.load_model`, which merges the run's trained part into its own base: that needs
`tunelab.methods`, which itself loads tokenizers through this module, so it lives in a module above both.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from tunelab.models.gguf import ModelNotFound, gguf_as_hf_dir, smollm2_gguf_path
from tunelab.runfolder import RunBase, RunFileError, RunFolder, RunNotFound
from tunelab.utils.cpu_bf16 import cpu_bf16

SMOLLM2_HF_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
"""The Hugging Face model the bundled GGUF is a quantized copy of (recorded as an adapter's base)."""
MODEL_ALIASES = ("smollm2-135m", "smollm2-135m-instruct")
"""Names of the bundled SmolLM2-135M-Instruct GGUF that model.name may use instead of a path."""


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: `kind` is hf_dir, gguf, tiny, hub or run; `path` the folder/file/id."""

    kind: str
    path: str
    gguf_file: str | None = None


def resolve_model(name: str) -> ModelSource:
    """Turn a config's model.name into a ModelSource, or raise ModelNotFound with the fix."""
    from tunelab.models.tiny import TINY_MODELS
    from tunelab.models.tiny_vlm import TINY_VLMS, tiny_vlm_dir

    if name in MODEL_ALIASES:
        return ModelSource("gguf", str(smollm2_gguf_path()))
    if name in TINY_MODELS:
        return ModelSource("tiny", name)
    if name in TINY_VLMS:  # a real HF folder, built once into the cache (tunelab.models.tiny_vlm)
        return ModelSource("hf_dir", str(tiny_vlm_dir(name)))
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ModelSource("gguf", str(path.resolve()))
    if path.is_dir():
        if RunFolder(path).is_run():
            return ModelSource("run", str(path.resolve()))
        if (path / "config.json").is_file():
            return ModelSource("hf_dir", str(path.resolve()))
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ModelSource("gguf", str(ggufs[0].resolve()))
        raise ModelNotFound(f"{path}: a folder, but no config.json (HF model) or single .gguf file in it")
    if path.suffix == ".gguf" or os.sep in name and not _looks_like_hub_id(name):
        raise ModelNotFound(f"{name}: no such model file or folder")
    if _looks_like_hub_id(name):
        try:
            from huggingface_hub import snapshot_download

            local = snapshot_download(name, local_files_only=True)
        except Exception:
            raise ModelNotFound(
                f"{name}: not in the local Hugging Face cache, and tunelab never downloads at run time. "
                f"Fetch it once on a connected machine (`hf download {name}`) and copy the cache, "
                "or point model.name at a local folder or .gguf file"
            ) from None
        return ModelSource("hf_dir", local)
    raise ModelNotFound(
        f"{name}: unknown model; use an alias (smollm2-135m, {', '.join(TINY_MODELS)}), "
        "a local HF folder, a .gguf file, or a cached hub id"
    )


def read_run_base(path: str | Path) -> RunBase:
    """What a finished run folder needs to be loaded as a base model (tunelab.runfolder), or ModelNotFound."""
    try:
        return RunFolder(path).as_base()
    except (RunNotFound, RunFileError) as e:  # unfinished, not a language model, or an unreadable file
        raise ModelNotFound(str(e)) from None


def base_chain(name: str) -> list[dict]:
    """The runs a model name stands on, nearest first: [{"run", "stage", "method", "base_model"}, ...].

    Empty for a plain model. The last entry's base_model is the original model (an alias, folder or file).
    """
    chain: list[dict] = []
    seen: set[Path] = set()
    src = resolve_model(name)
    while src.kind == "run":
        run = read_run_base(src.path)
        if run.path in seen:
            raise ModelNotFound(f"{run.path}: its base model chain loops back to itself")
        seen.add(run.path)
        chain.append({"run": str(run.path), "stage": run.stage, "method": run.method, "base_model": run.base_name})
        src = resolve_model(run.base_name)
    return chain


def root_model(name: str) -> str:
    """The original model under a chain of runs (the name itself when it is not a run)."""
    chain = base_chain(name)
    return chain[-1]["base_model"] if chain else name


def vision_source(name: str) -> Path | None:
    """The HF folder of the vision model a model name stands for (following run folders to their root),
    or None when the name is not a vision model."""
    from tunelab.models.vision import is_vision_folder

    src = resolve_model(root_model(name))
    if src.kind != "hf_dir":
        return None
    return Path(src.path) if is_vision_folder(src.path) else None


def is_vision_model(name: str) -> bool:
    """Whether model.name (alias, folder, tiny name or run folder) is a vision-language model."""
    return vision_source(name) is not None


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def pick_device(requested: str = "auto") -> torch.device:
    """cuda when asked for or available (auto), mps (Apple GPU) when asked for and torch supports it, else cpu."""
    if requested == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise RuntimeError("train.device=mps but this torch has no usable Apple GPU backend (needs macOS 12.3+ "
                               "on Apple silicon and a torch build with MPS); use device=auto or cpu")
        return torch.device("mps")
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("train.device=cuda but no CUDA device is visible; use device=auto or cpu")
        return torch.device("cuda")
    return torch.device("cpu")


def pick_dtype(requested: str, device: torch.device) -> torch.dtype:
    """auto: bfloat16 on a GPU that supports it and on a CPU that multiplies it natively (utils.cpu_bf16),
    float32 elsewhere; else what was asked."""
    if requested == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        if device.type == "cpu" and cpu_bf16():
            return torch.bfloat16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[requested]


def load_tokenizer(name: str, trust_remote_code: bool = False):
    """The tokenizer of a model name (same resolution as load_model)."""
    from transformers import AutoTokenizer

    from tunelab.models.tiny import tiny_tokenizer

    src = resolve_model(name)
    if src.kind == "tiny":
        return tiny_tokenizer()
    if src.kind == "run":  # the tokenizer the run trained with; its chat_template.jinja comes along
        read_run_base(src.path)  # refuses an unfinished run before anything else loads
        return RunFolder(src.path).load_tokenizer()
    path = gguf_as_hf_dir(src.path) if src.kind == "gguf" else src.path
    tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(name: str, dtype: str = "auto", device: torch.device | str = "cpu", trust_remote_code: bool = False,
               quantize: dict | None = None):
    """Load a causal LM (or an image-text-to-text model, from a folder that holds one) by name (see
    resolve_model) in the requested dtype on the device.

    A run folder is refused with ModelNotFound naming `tunelab.bases.load_model`, which loads it (its base with
    the run's trained part merged in); this function loads the plain models underneath.
    `quantize` (QLoRA's settings: quant_type, double_quant, compute_dtype) with a model folder on CUDA:
    transformers quantizes each linear layer to 4 bits as it loads it (BitsAndBytesConfig with a
    device_map), so the full-precision model never sits on the GPU; the model is marked with
    `tunelab_quantized`. Elsewhere the model loads as usual and `methods.qlora` quantizes it.
    """
    from transformers import AutoModelForCausalLM

    from tunelab.models.tiny import build_tiny_model

    from tunelab.models.vision import is_vision_folder, load_vision_model

    device = torch.device(device)
    torch_dtype = pick_dtype(dtype, device)
    src = resolve_model(name)
    if src.kind == "hf_dir" and is_vision_folder(src.path):  # image-text-to-text: tunelab.models.vision
        return load_vision_model(src.path, torch_dtype, trust_remote_code).to(device)
    if quantize and device.type == "cuda" and src.kind not in ("tiny", "run"):
        return _load_quantized(gguf_as_hf_dir(src.path) if src.kind == "gguf" else src.path, torch_dtype, device,
                               trust_remote_code, quantize)
    if src.kind == "tiny":
        model = build_tiny_model(src.path).to(torch_dtype)
    elif src.kind == "run":
        raise ModelNotFound(f"{src.path}: a tunelab run folder; load it with tunelab.bases.load_model, which merges "
                            "its trained part into its own base (tunelab.models loads plain models only)")
    else:
        path = gguf_as_hf_dir(src.path) if src.kind == "gguf" else src.path
        # on a GPU the weights go straight from the files to the device (no full copy in host memory first)
        placement = {"device_map": {"": _cuda_index(device)}} if device.type == "cuda" else {}
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype, trust_remote_code=trust_remote_code,
                                                     **placement)
    source = base_source(name)
    if source["base_model_name_or_path"]:  # PEFT records this in adapter_config.json (AutoPeft, vLLM read it)
        model.name_or_path = source["base_model_name_or_path"]
        model.config._name_or_path = source["base_model_name_or_path"]
    return model.to(device)


def base_source(name: str) -> dict:
    """What a model name really is, for the tools that load an adapter without tunelab.

    ``base_model_name_or_path``: what PeftModel/AutoPeftModelForCausalLM/vLLM should load as the base: a local
    HF folder's absolute path, a hub id as written, the bundled SmolLM2's Hugging Face id
    (HuggingFaceTB/SmolLM2-135M-Instruct), a GGUF file's converted HF folder, a run folder's path; None for
    the tiny test models (built in memory, nothing to load them from). ``base_model_path``: the local files
    tunelab loaded (the converted folder for a GGUF, the hub cache snapshot for a hub id), or None.
    """
    src = resolve_model(name)
    if src.kind == "tiny":
        return {"base_model_name_or_path": None, "base_model_path": None}
    if src.kind == "gguf":
        local = str(gguf_as_hf_dir(src.path))
        return {"base_model_name_or_path": SMOLLM2_HF_ID if name in MODEL_ALIASES else local, "base_model_path": local}
    if src.kind == "hf_dir" and not Path(name).expanduser().is_dir():  # a hub id found in the local cache
        return {"base_model_name_or_path": name, "base_model_path": src.path}
    return {"base_model_name_or_path": src.path, "base_model_path": src.path}


def _cuda_index(device: torch.device) -> int:
    """The CUDA device index transformers' device_map wants (`cuda` alone: the current device)."""
    return device.index if device.index is not None else torch.cuda.current_device()


def _load_quantized(path, dtype: torch.dtype, device: torch.device, trust_remote_code: bool, settings: dict):
    """A model folder loaded straight into 4-bit linears on `device` (every linear but the output head).

    Embeddings, norms and the head stay in `dtype` (bf16 on a GPU): a documented choice, see docs/speed.md.
    """
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dtypes = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=settings["quant_type"],
                                bnb_4bit_use_double_quant=settings["double_quant"],
                                bnb_4bit_compute_dtype=dtypes[settings["compute_dtype"]])
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, quantization_config=config,
                                                 device_map={"": _cuda_index(device)},
                                                 trust_remote_code=trust_remote_code)
    model.tunelab_quantized = dict(settings)
    return model
