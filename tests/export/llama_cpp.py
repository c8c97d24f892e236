"""Run a tunelab GGUF export through llama.cpp itself (its loader, tokenizer and CPU kernels).

`benchmarks/llama_cpp/llama_logits.c` built against a llama.cpp checkout prints, for a GGUF file, the
token ids llama.cpp's tokenizer gives a text and the logits of every position of a token sequence. The
functions here build it, run it, and compare with the transformers model the file came from.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np

SOURCE = Path(__file__).resolve().parents[2] / "benchmarks" / "llama_cpp" / "llama_logits.c"
TOOL_ENV = "TUNELAB_LLAMA_LOGITS"
"""Path of a built llama_logits binary; tests that need llama.cpp run only when it is set."""


def build_tool(llama_cpp: Path, out: Path) -> Path:
    """Compile llama_logits.c against a llama.cpp checkout whose `build/bin` holds libllama (cmake, shared)."""
    lib = llama_cpp / "build" / "bin"
    cmd = ["cc", "-O2", str(SOURCE), f"-I{llama_cpp / 'include'}", f"-I{llama_cpp / 'ggml' / 'include'}",
           f"-L{lib}", "-lllama", f"-Wl,-rpath,{lib}", "-o", str(out)]
    subprocess.run(cmd, check=True)
    return out


def run_tool(tool: Path, gguf: Path, text: str, ids: list[int]) -> tuple[np.ndarray, list[int]]:
    """(logits (len(ids), vocab) float32, token ids of `text`) as llama.cpp computes them from `gguf`."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "text").write_text(text, encoding="utf-8")
        proc = subprocess.run([str(tool), str(gguf), str(tmp / "text"), ",".join(map(str, ids)),
                               str(tmp / "logits"), str(tmp / "tokens")], capture_output=True, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        if proc.returncode:
            raise RuntimeError(f"llama.cpp on {gguf.name} (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
        logits = np.fromfile(tmp / "logits", dtype=np.float32).reshape(len(ids), -1)
        tokens = [int(t) for t in (tmp / "tokens").read_text().split()]
    return logits, tokens


def compare(reference: np.ndarray, got: np.ndarray) -> tuple[float, float]:
    """(max |difference|, relative RMS difference) of two logit arrays of the same shape."""
    diff = got - reference
    return float(np.abs(diff).max()), float(np.linalg.norm(diff) / np.linalg.norm(reference))
