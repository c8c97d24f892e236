"""The studio's facts (/api/info), its page (/) and the bundled API reference (/docs); the static files
under /static are mounted by create_app (a router cannot carry a mount)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from tunelab.studio.routes.deps import SettingsDep

STATIC = Path(__file__).resolve().parent.parent / "static"

router = APIRouter()


@router.get("/api/info", tags=["studio"])
def info(settings: SettingsDep) -> dict:
    return {"data_dir": str(settings.data_dir), "model_roots": [str(p) for p in settings.model_roots],
            "slots": settings.slots, "max_upload_mb": settings.max_upload_mb}


@router.get("/docs", include_in_schema=False)
def api_docs() -> FileResponse:
    """The API reference, rendered from /openapi.json by a bundled page (works offline)."""
    return FileResponse(STATIC / "api.html")


@router.get("/", include_in_schema=False)
def index() -> FileResponse:
    return FileResponse(STATIC / "index.html")
