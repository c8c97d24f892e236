"""tunelab's GGUF exports read by llama.cpp itself: logits and tokenization against the source model.

    python benchmarks/scripts/llama_cpp_check.py --llama-cpp PATH/TO/llama.cpp --out ROWS.jsonl

PATH/TO/llama.cpp: a checkout built with cmake as shared libraries (`cmake -B build -DBUILD_SHARED_LIBS=ON
&& cmake --build build --target llama`). For each family's tiny random model (tests/export/conftest.py) and
each quant type, the export is loaded by llama.cpp, which computes the logits of 12 token ids and tokenizes
a few texts; each row records the largest and relative differences to the transformers model's fp32 logits
and whether the token ids equal the source tokenizer's. Also writes the built tool's path for the tests
(`TUNELAB_LLAMA_LOGITS=... pytest tests/export/test_gguf_llama_cpp.py`).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "src")]

QUANTS = ("f32", "f16", "bf16", "q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0", "q3_k_m", "q2_k")
TEXTS = ("Hello world! 12345", "  two  spaces\tand\ttabs\n", "<|im_start|>user\nhi<|im_end|>\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-cpp", required=True, type=Path)
    ap.add_argument("--out", required=True)
    ap.add_argument("--families", default=None, help="comma-separated; default: every exported family")
    ap.add_argument("--quants", default=",".join(QUANTS))
    ap.add_argument("--version", default="unknown", help="the llama.cpp build recorded in each row, e.g. b11434")
    a = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from tests.export.conftest import FAMILIES, family_model, small_tokenizer
    from tests.export.llama_cpp import build_tool, compare, run_tool
    from tunelab.export import export

    work = Path(tempfile.mkdtemp(prefix="llama-cpp-check-"))
    tool = build_tool(a.llama_cpp, work / "llama_logits")
    print(f"tool: {tool}", flush=True)
    tok = small_tokenizer()
    ids = torch.randint(17, 2048, (12,), generator=torch.Generator().manual_seed(0)).tolist()
    for family in (a.families.split(",") if a.families else FAMILIES):
        model = family_model(family)
        with torch.no_grad():
            reference = model(torch.tensor([ids])).logits[0].numpy()
        for quant in a.quants.split(","):
            path = export(model, tok, tok.chat_template, "gguf", work / f"{family}-{quant}.gguf", quant=quant)
            row = {"bench": "gguf-in-llama.cpp", "family": family, "quant": quant, "llama_cpp": a.version,
                   "date": time.strftime("%Y-%m-%d")}
            try:
                logits, _ = run_tool(tool, path, "", ids)
                row["max_abs"], row["rel_rms"] = (round(x, 5) for x in compare(reference, logits))
                same = []
                for text in TEXTS:
                    _, tokens = run_tool(tool, path, text, ids[:1])
                    same.append(tokens == tok(text, add_special_tokens=False)["input_ids"])
                row["tokens_equal"] = all(same)
            except RuntimeError as e:
                row["error"] = str(e)
            print(json.dumps(row), flush=True)
            with open(a.out, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
