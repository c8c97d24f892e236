"""QLoRA (Dettmers et al. 2023, arXiv:2305.14314): LoRA adapters on a frozen 4-bit (NF4) base.

Quantization: the loaded model's linear layers (all but the output head) are replaced by
`bitsandbytes.nn.Linear4bit` modules holding the same weights in 4 bits (NF4 by default, double
quantization, bf16 compute). This is public module replacement and works for any model object,
including tiny models built from a config that have no folder for
`from_pretrained(quantization_config=...)`; the result is the same quantization that path gives.
bitsandbytes >= 0.48 runs these layers on the CPU as well as on CUDA.

The adapter is a standard PEFT folder. Reloading quantizes the base again and attaches it.
Merging dequantizes each base weight and adds the LoRA update in full precision, so the merged
model computes exactly what the trained (dequantized base + adapter) model computed; it is a plain
floating-point model (requantize it when exporting if you want 4-bit weights).
"""

from __future__ import annotations

from pathlib import Path

import torch

from tunelab.methods import import_bitsandbytes, lora
from tunelab.methods.peft_io import load_state

__all__ = ["WEIGHTS_DIR", "apply", "load_for_inference", "load_settings", "load_state", "merge", "quantize", "save"]

WEIGHTS_DIR = "adapter"
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def _bnb():
    return import_bitsandbytes("method.name=qlora")


def quantize(model, quant_type: str = "nf4", double_quant: bool = True, compute_dtype: str = "bfloat16"):
    """Replace every nn.Linear except the output head by a bitsandbytes Linear4bit with the same weights."""
    bnb = _bnb()
    from tunelab.models.vision import VISION_FAMILIES, family_of, part_of

    head = model.get_output_embeddings()
    targets = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not head]
    if getattr(model.config, "model_type", None) in VISION_FAMILIES:  # a VLM: only its language model goes 4-bit
        family = family_of(model)
        targets = [(n, m) for n, m in targets if part_of(n + ".", family) == "language"]
    for name, lin in targets:
        device = lin.weight.device
        q = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=lin.bias is not None,
                              compute_dtype=DTYPES[compute_dtype], compress_statistics=double_quant,
                              quant_type=quant_type, device="meta")
        # on a GPU the weights are quantized where they are (no round trip through host memory)
        data = lin.weight.data if lin.weight.is_cuda else lin.weight.data.float().cpu()
        q.weight = bnb.nn.Params4bit(data, requires_grad=False,
                                     compress_statistics=double_quant, quant_type=quant_type)
        if lin.bias is not None:
            q.bias = torch.nn.Parameter(lin.bias.data.clone(), requires_grad=False)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, q.to(device))
    model.tunelab_quantized = {"quant_type": quant_type, "double_quant": double_quant, "compute_dtype": compute_dtype}
    return model


def load_settings(cfg) -> dict | None:
    """What `models.load_model(quantize=...)` needs to quantize while loading; None for LoftQ (which needs
    the full-precision weights to fit its adapters to the quantization error)."""
    if cfg.init == "loftq":
        return None
    return {"quant_type": cfg.quant_type, "double_quant": cfg.double_quant, "compute_dtype": cfg.compute_dtype}


def apply(model, cfg):
    """Quantize the base to 4 bits (unless it was quantized while loading), then add LoRA adapters on top.

    Every base parameter is frozen and keeps its dtype: embeddings, norms and the output head stay in the
    model dtype (bf16 on a GPU). PEFT's `prepare_model_for_kbit_training` would upcast them to fp32
    (about +2.2 GiB for a 7B shape's embeddings and head) for no measured gain in bf16 training.
    """
    originals = {n: m.weight.detach().float().clone() for n, m in model.named_modules()
                 if isinstance(m, torch.nn.Linear)} if cfg.init == "loftq" else {}
    if not getattr(model, "tunelab_quantized", None):
        model = quantize(model, cfg.quant_type, cfg.double_quant, cfg.compute_dtype)
    for p in model.parameters():
        p.requires_grad_(False)
    model = lora.apply(model, cfg)
    if originals:
        loftq_init(model, originals)
    return model


@torch.no_grad()
def loftq_init(model, originals: dict[str, torch.Tensor]) -> None:
    """LoftQ (Li et al. 2023, arXiv:2310.08659), one alternation: set each adapter to the best rank-r
    approximation of the quantization error, so dequantize(Q) + B A * scaling is as close to W as rank r allows.

    Computed here with torch.linalg.svd on whatever device holds the weights (PEFT's own LoftQ needs CUDA).
    """
    from peft.tuners.lora import LoraLayer

    prefix = "base_model.model."
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        w = originals[name.removeprefix(prefix)]  # (out, in)
        error = w - dequantized_linear(module.get_base_layer()).weight.to(w.device)
        u, s, vh = torch.linalg.svd(error, full_matrices=False)  # (out, k), (k,), (k, in)
        for adapter in module.active_adapters:
            r, scaling = module.r[adapter], module.scaling[adapter]
            root = s[:r].sqrt() / scaling ** 0.5
            module.lora_B[adapter].weight.copy_(u[:, :r] * root)  # (out, r)
            module.lora_A[adapter].weight.copy_(root[:, None] * vh[:r])  # (r, in)


def load_for_inference(base_model, out_dir: Path):
    """Quantize the base exactly as in training and attach the adapter."""
    import json

    from peft import PeftConfig, PeftModel

    settings = json.loads((Path(out_dir) / "tunelab_quant.json").read_text(encoding="utf-8"))
    PeftConfig.from_pretrained(str(out_dir))  # fails early with a clear message if the folder is not an adapter
    return PeftModel.from_pretrained(quantize(base_model, **settings), str(out_dir), is_trainable=False)


def save(model, out_dir: Path) -> None:
    """Write the PEFT adapter and tunelab_quant.json (quantization settings needed to reload it)."""
    import json

    from tunelab.methods.peft_io import save as save_adapter

    save_adapter(model, out_dir)
    settings = model.get_base_model().tunelab_quantized
    (Path(out_dir) / "tunelab_quant.json").write_text(json.dumps(settings, indent=2), encoding="utf-8")


def dequantized_linear(q) -> torch.nn.Linear:
    """A plain nn.Linear holding a Linear4bit's dequantized weight (float32)."""
    bnb = _bnb()
    # CPU inference repacks 4-bit weights into a kernel-specific layout; serialising restores the portable one
    q.state_dict()
    if getattr(q.weight.quant_state, "packing_format_for_cpu", False):
        raise RuntimeError("bitsandbytes kept a CPU-packed 4-bit weight; upgrade bitsandbytes to >= 0.49")
    w = bnb.functional.dequantize_4bit(q.weight.data, q.weight.quant_state).float()  # (out, in)
    lin = torch.nn.Linear(q.in_features, q.out_features, bias=q.bias is not None, device=w.device)
    with torch.no_grad():
        lin.weight.copy_(w)
        if q.bias is not None:
            lin.bias.copy_(q.bias.float())
    return lin


def merge(model):
    """Plain float model: each adapted layer becomes dequantize(W4) + LoRA delta; other 4-bit layers are dequantized.

    The sums are made in float32 and stored in the dtype of the model's unquantized weights (its embeddings), so
    the merged model runs in one dtype (bf16 where the model was loaded in bf16).
    """
    from peft.tuners.lora import LoraLayer

    bnb = _bnb()
    base = model.get_base_model()
    dtype = base.get_input_embeddings().weight.dtype
    modules = list(base.named_modules())
    adapted = [n for n, m in modules if isinstance(m, LoraLayer)]
    for name, module in modules:
        if name in adapted:
            lin = dequantized_linear(module.get_base_layer())
            with torch.no_grad():
                for adapter in module.active_adapters:
                    lin.weight += module.get_delta_weight(adapter).float()  # (out, in)
        elif isinstance(module, bnb.nn.Linear4bit) and not any(name.startswith(a + ".") for a in adapted):
            lin = dequantized_linear(module)
        else:
            continue
        parent_name, _, child = name.rpartition(".")
        setattr(base.get_submodule(parent_name) if parent_name else base, child, lin.to(dtype))
    del base.tunelab_quantized
    return base
