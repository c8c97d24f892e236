"""`safetensors`: a plain Hugging Face model folder (sharded safetensors + tokenizer + chat_template.jinja).

The folder loads with nothing but transformers (`AutoModelForCausalLM.from_pretrained(folder)`),
and is the input vLLM, TGI, llama.cpp's converter and most other runtimes expect.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from tunelab.export.base import ExportError
from tunelab.utils.io import atomic_dir, atomic_write_text


def export_merged(model: Any, tokenizer: Any, chat_template: str | None, out_path: str | Path, *,
                  max_shard_size: str | int = "2GB", dtype: str | None = None) -> Path:
    """Save `model` as sharded safetensors with its tokenizer and chat template into the folder `out_path`.

    `dtype` ("float32", "float16", "bfloat16") casts a copy of the weights before saving; the
    template is written both into the tokenizer config and as `chat_template.jinja`, so
    `AutoTokenizer.from_pretrained(out_path).chat_template` is exactly the trained one.
    """
    import torch

    out_path = Path(out_path)
    if dtype is not None:
        dtypes = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
        if dtype not in dtypes:
            raise ExportError(f"dtype={dtype!r} is not one of {', '.join(dtypes)}")
        model = copy.deepcopy(model).to(dtypes[dtype])  # the caller's model keeps its dtype
    if chat_template is not None:  # on a shallow copy: the caller's tokenizer keeps its own template
        tokenizer = copy.copy(tokenizer)
        tokenizer.chat_template = chat_template
    with atomic_dir(out_path) as tmp:
        model.save_pretrained(tmp, safe_serialization=True, max_shard_size=max_shard_size)
        tokenizer.save_pretrained(tmp)
        if chat_template is not None:
            atomic_write_text(tmp / "chat_template.jinja", chat_template)
    return out_path

