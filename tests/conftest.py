"""Shared fixtures: tiny models, the real data folder, a temp run root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The suite's numbers must not depend on the CPU it runs on: `auto` precision is float32 here unless a test asks
# for the bf16 default of CPUs with bf16 matrix units (tunelab.utils.cpu_bf16); subprocesses inherit it.
os.environ.setdefault("TUNELAB_CPU_BF16", "0")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("TUNELAB_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data: real public datasets (read-only)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"{SHARED_DATA} is missing: the test suite reads real datasets from ../shared/data")
    return SHARED_DATA


@pytest.fixture(scope="session")
def addition_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 Alpaca records "What is a plus b?" -> "a+b": a tiny SFT set that trains in a few steps."""
    import json

    path = tmp_path_factory.mktemp("data") / "train.json"
    rows = [{"instruction": f"What is {a} plus {b}?", "input": "", "output": f"{a + b}"}
            for a in range(4) for b in range(4)]
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from tunelab.models import load_tokenizer

    return load_tokenizer("tiny-llama")


@pytest.fixture()
def tiny_llama():
    from tunelab.models import load_model

    return load_model("tiny-llama")


@pytest.fixture()
def tiny_qwen2():
    from tunelab.models import load_model

    return load_model("tiny-qwen2")


@pytest.fixture()
def full_disk_at_save(monkeypatch):
    """fail(n): the n-th torch.save from now writes a few bytes, then finds the disk full (OSError ENOSPC)."""
    import errno

    import torch

    real_save = torch.save

    def fail(n: int) -> None:
        calls = {"n": 0}

        def filling_save(obj, f, *a, **k):
            calls["n"] += 1
            if calls["n"] == n:
                f.write(b"PK\x03\x04 partial")
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_save(obj, f, *a, **k)

        monkeypatch.setattr(torch, "save", filling_save)

    return fail
