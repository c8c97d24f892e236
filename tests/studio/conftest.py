"""Fixtures for the studio: a data dir per test, an app over it, and a tiny alpaca file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("multipart")

from fastapi.testclient import TestClient

from tunelab.studio.app import create_app
from tunelab.studio.paths import Settings

RECORDS = [{"instruction": f"Say hello to friend {i}", "input": "", "output": f"Hello, friend {i}!"}
           for i in range(12)]


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "studio", max_upload_mb=1.0, poll_s=0.2)


@pytest.fixture()
def client(settings: Settings):
    """The app with its job watcher off (tests that train turn it on themselves)."""
    with TestClient(create_app(settings, start_worker=False)) as c:
        yield c


@pytest.fixture()
def alpaca_bytes() -> bytes:
    return json.dumps(RECORDS).encode()


def upload(client, name: str, content: bytes):
    return client.post("/api/datasets", files={"file": (name, content, "application/octet-stream")})


def wait_for(predicate, timeout: float = 240.0, every: float = 0.5):
    """Poll until predicate() returns something truthy (or fail after timeout: a hung job, not slowness)."""
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"condition not met within {timeout}s")
