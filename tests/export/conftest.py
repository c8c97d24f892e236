"""Fixtures for the export tests: tiny models and the tokenizer, built once per module."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def llama():
    from tunelab.models import load_model

    return load_model("tiny-llama").eval()


@pytest.fixture(scope="module")
def qwen2():
    from tunelab.models import load_model

    return load_model("tiny-qwen2").eval()


@pytest.fixture(scope="module")
def tok():
    from tunelab.models import load_tokenizer

    return load_tokenizer("tiny-llama")


@pytest.fixture(scope="module")
def batch():
    """(2, 9) token ids from a fixed generator, so every test scores the same input."""
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 49152, (2, 9), generator=g)
