"""What every route may need, as FastAPI dependencies read from `app.state` (set once by create_app).

    @router.get("/api/thing")
    def thing(settings: SettingsDep, store: StoreDep) -> dict: ...

Tests can swap any of them with `app.dependency_overrides[get_store] = ...`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from tunelab.studio.jobs import JobRunner
from tunelab.studio.paths import Settings
from tunelab.studio.runs import ModelCache
from tunelab.studio.store import JobStore


async def get_settings(request: Request) -> Settings:
    """The studio's settings (data dir, model roots, slots, limits)."""
    return request.app.state.settings


async def get_store(request: Request) -> JobStore:
    """The SQLite job store."""
    return request.app.state.store


async def get_runner(request: Request) -> JobRunner:
    """The job runner (queue watcher and worker subprocesses)."""
    return request.app.state.runner


async def get_cache(request: Request) -> ModelCache:
    """The playground's cache of loaded models."""
    return request.app.state.cache


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[JobStore, Depends(get_store)]
RunnerDep = Annotated[JobRunner, Depends(get_runner)]
CacheDep = Annotated[ModelCache, Depends(get_cache)]
