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
    bad = [o for o in outcomes if not o.ok]
    assert not bad, report(family, outcomes)


def test_cases_are_seeded_and_plenty() -> None:
    """The same seed gives the same cases, and there are at least 1,000 of them."""
    ids = {fam: [c.id for c in generate(fam)] for fam in FAMILIES}
    assert ids == {fam: [c.id for c in generate(fam)] for fam in FAMILIES}
    assert sum(map(len, ids.values())) >= 1000, {fam: len(v) for fam, v in ids.items()}
    contents = [c.files for c in generate("data")]
    assert contents == [c.files for c in generate("data")]
