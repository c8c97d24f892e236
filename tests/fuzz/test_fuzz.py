"""The hardening promises, checked on every seeded fuzz case of each family (docs/reliability.md).

One test per family; each runs all of its cases and fails with the full list of cases that broke a promise.
"""

from __future__ import annotations

import pytest

from .cases import FAMILIES, generate
from .runner import report, run_family


@pytest.fixture(autouse=True)
def _one_thread():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_refuses_bad_input_cleanly(family: str) -> None:
    outcomes = run_family(family)
    assert outcomes, f"no {family} cases generated"
    if any(not o.ok for o in outcomes):  # the list of broken cases, without pytest's repr of every outcome
        pytest.fail(report(family, outcomes), pytrace=False)


def test_cases_are_seeded_and_plenty() -> None:
    """The same seed gives the same cases, and there are at least 1,000 of them."""
    ids = {fam: [c.id for c in generate(fam)] for fam in FAMILIES}
    assert ids == {fam: [c.id for c in generate(fam)] for fam in FAMILIES}
    assert sum(map(len, ids.values())) >= 1000, {fam: len(v) for fam, v in ids.items()}
    contents = [c.files for c in generate("data")]
    assert contents == [c.files for c in generate("data")]


def test_harness_catches_each_broken_promise(tmp_path) -> None:
    """The checks can fail: an accepted input, a message without the key, and a stray file are each reported."""
    from .cases import BASE_FILES, Case
    from .harness import _fs_problems, run_cli

    accepted = run_cli(Case("meta", "valid", dict(BASE_FILES), ["config", "show", "cfg.yaml"]), tmp_path, 0)
    assert accepted.problems == ["accepted bad input (exit 0)"]
    refused = run_cli(Case("meta", "bad-lr", dict(BASE_FILES), ["config", "show", "cfg.yaml", "train.lr=-1"],
                           names=("train.lr",)), tmp_path, 1)
    assert refused.ok, refused.line()
    unnamed = run_cli(Case("meta", "bad-lr", dict(BASE_FILES), ["config", "show", "cfg.yaml", "train.lr=-1"],
                           names=("data.train",)), tmp_path, 2)
    assert unnamed.problems == ["message names none of ['data.train']"]
    case = Case("meta", "fs")
    after = {"work/a": (1, 1), "outside/x": (1, 2), "work/runs/fuzz/m.tmp": (1, 3)}
    problems = _fs_problems(case, {"work/a": (1, 1)}, after, True, ("work/runs/fuzz",))
    assert problems == ["wrote outside the run folder: outside/x", "left a partial run folder: work/runs/fuzz/m.tmp",
                        "left half-written files: work/runs/fuzz/m.tmp"]
