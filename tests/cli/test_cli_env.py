"""The CLI sets the CUDA allocator to expandable segments (long contexts) unless the user chose one."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = "import os, tunelab.cli; print(os.environ['PYTORCH_CUDA_ALLOC_CONF'])"


@pytest.mark.parametrize(("given", "expected"), [(None, "expandable_segments:True"),
                                                 ("max_split_size_mb:512", "max_split_size_mb:512")])
def test_allocator_default_and_user_value_wins(given, expected):
    env = {k: v for k, v in os.environ.items() if k != "PYTORCH_CUDA_ALLOC_CONF"}
    if given is not None:
        env["PYTORCH_CUDA_ALLOC_CONF"] = given
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expected
