"""GGUF exports read by llama.cpp itself: every family and the common quant types give the source model's logits
within the quant type's tolerance, and llama.cpp's tokenizer gives the source tokenizer's ids.

Needs a llama_logits binary built against llama.cpp (benchmarks/scripts/llama_cpp_check.py builds one);
set TUNELAB_LLAMA_LOGITS to its path. Skipped otherwise: llama.cpp is not a dependency of tunelab.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from tests.export.conftest import FAMILIES, family_model
from tests.export.llama_cpp import TOOL_ENV, compare, run_tool

from tunelab.export import export

TOOL = os.environ.get(TOOL_ENV)
pytestmark = pytest.mark.skipif(not TOOL, reason=f"{TOOL_ENV} not set (a llama_logits binary built against llama.cpp)")

# (max |difference|, relative RMS) allowed against the fp32 transformers logits; llama.cpp's CPU kernels
# also round the activations (to q8 blocks for quantized weights), so these sit above the transformers-GGUF
# loader's tolerances in test_export_gguf_families.py. Measured values: docs/export.md.
TOL = {"f32": (3e-3, 2e-3), "f16": (5e-3, 3e-3), "q8_0": (0.08, 0.06), "q4_k_m": (0.6, 0.45)}
TEXTS = ("Hello world! 12345", "  two  spaces\tand\ttabs\n", "<|im_start|>user\nhi<|im_end|>\n")


@pytest.fixture(scope="module")
def ids():
    return torch.randint(17, 2048, (12,), generator=torch.Generator().manual_seed(0)).tolist()


@pytest.mark.parametrize("quant", list(TOL))
@pytest.mark.parametrize("family", FAMILIES)
def test_llama_cpp_gives_the_source_models_logits(family, quant, small_tok, ids, tmp_path):
    model = family_model(family)
    with torch.no_grad():
        reference = model(torch.tensor([ids])).logits[0].numpy()
    path = export(model, small_tok, small_tok.chat_template, "gguf", tmp_path / f"{family}.gguf", quant=quant)
    logits, _ = run_tool(Path(TOOL), path, "", ids)
    max_abs, rel = compare(reference, logits)
    assert max_abs <= TOL[quant][0] and rel <= TOL[quant][1], (family, quant, max_abs, rel)


@pytest.mark.parametrize("family", FAMILIES)
def test_llama_cpp_tokenizes_like_the_source_tokenizer(family, small_tok, ids, tmp_path):
    path = export(family_model(family), small_tok, small_tok.chat_template, "gguf", tmp_path / "m.gguf", quant="q8_0")
    for text in TEXTS:
        _, tokens = run_tool(Path(TOOL), path, text, ids[:1])
        assert tokens == small_tok(text, add_special_tokens=False)["input_ids"], (family, text)
