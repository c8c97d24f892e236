"""The compiler's worker pool is started early as an optimisation only: it can be turned off, and a failure
to start it never fails a run."""

from __future__ import annotations

import torch._inductor.async_compile as async_compile

from tunelab.kernels import warmup


def test_starts_the_pool_through_torchs_own_warm_up(monkeypatch):
    calls = []
    monkeypatch.delenv(warmup.DISABLE_ENV, raising=False)
    monkeypatch.setattr(async_compile, "maybe_warm_pool", lambda: calls.append("warm"))
    assert warmup.start_compile_workers() is True
    assert calls == ["warm"]


def test_switched_off_by_the_environment(monkeypatch):
    calls = []
    monkeypatch.setenv(warmup.DISABLE_ENV, "0")
    monkeypatch.setattr(async_compile, "maybe_warm_pool", lambda: calls.append("warm"))
    assert warmup.start_compile_workers() is False
    assert calls == []


def test_a_pool_that_cannot_start_does_not_fail_the_run(monkeypatch):
    def broken():
        raise RuntimeError("no workers here")

    monkeypatch.delenv(warmup.DISABLE_ENV, raising=False)
    monkeypatch.setattr(async_compile, "maybe_warm_pool", broken)
    assert warmup.start_compile_workers() is False
