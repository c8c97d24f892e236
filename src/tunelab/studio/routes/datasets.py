"""Datasets screen: the library of uploaded files, their inspection, column mapping and preparation."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from tunelab.studio import datasets, forms
from tunelab.studio.paths import StudioError
from tunelab.studio.routes.deps import SettingsDep
from tunelab.studio.upload import receive_upload
from tunelab.utils.userfiles import loads_json

router = APIRouter(tags=["datasets"])

# The upload endpoint reads the body itself (to enforce the size limit while receiving); this documents it.
UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"],
    "properties": {"file": {"type": "string", "format": "binary", "description": "JSON, JSONL, CSV or Parquet; or a .zip of one JSON/JSONL records file and the images it names"}}}}}}}


class PrepareBody(BaseModel):
    op: str = Field(description="clean, dedup or split")
    options: dict[str, Any] = Field(default_factory=dict, description="clean: min_chars, max_chars; "
                                    "dedup: mode (exact|near|both), threshold; split: val, test, seed")


class ColumnsBody(BaseModel):
    columns: dict[str, str] = Field(description="Standard field -> the file's column, e.g. "
                                    "{\"instruction\": \"question\", \"output\": \"answer\"}; {} removes the mapping.")


@router.get("/api/datasets")
def list_datasets(settings: SettingsDep) -> list[dict]:
    """The dataset library."""
    return datasets.list_datasets(settings)


@router.post("/api/datasets", openapi_extra=UPLOAD_BODY)
async def upload(request: Request, settings: SettingsDep) -> dict:
    """Upload a JSON/JSONL/CSV/Parquet file (multipart field `file`): parsed as it streams in, refused with
    413 once it passes the size limit (whatever Content-Length said), sanitized name, never overwrites.
    A .zip of one records file and its images becomes <name>.jsonl with the images in <name>/ beside it
    (entry names checked to stay inside, total unpacked size limited; tunelab.studio.image_zip)."""
    path = await receive_upload(request, settings)
    return {"name": path.name, "path": str(path.relative_to(settings.data_dir))}


@router.get("/api/datasets/{name}/inspect")
def inspect(name: str, settings: SettingsDep, model: str = "tiny-llama", max_length: int = 1024,
            columns: str | None = None) -> dict:
    """Format, counts, token-length histogram and a rendered example with trained spans.

    `columns` (JSON text `{"instruction": "question", ...}`) maps the file's columns to standard
    fields first; without it the mapping saved with the file is used (`{}` = none).
    """
    if model and forms._model_problem(model, settings):
        raise StudioError(f"model {model!r}: use an alias or a model under a model root")
    return datasets.inspect(settings, name, model, max_length, _columns_query(columns))


@router.put("/api/datasets/{name}/columns")
def save_columns(name: str, body: ColumnsBody, settings: SettingsDep) -> dict:
    """Save the column mapping with a library file (checked against its columns); New jobs on it use it."""
    return {"name": name, "columns": datasets.save_columns(settings, name, body.columns) or {}}


@router.post("/api/datasets/{name}/prepare")
def prepare(name: str, body: PrepareBody, settings: SettingsDep) -> dict:
    """clean, dedup or split a library file; the results are new library files."""
    return datasets.prepare(settings, name, body.op, body.options)


@router.delete("/api/datasets/{name}")
def delete(name: str, settings: SettingsDep) -> dict:
    datasets.delete_dataset(settings, name)
    return {"deleted": name}


def _columns_query(text: str | None) -> dict | None:
    """The `columns` query parameter as a mapping (None when absent), or a 400 saying what to send."""
    if text is None:
        return None
    try:
        value = loads_json(text, "columns", StudioError)  # deep nesting and lone surrogates are a 400 too
    except json.JSONDecodeError as e:
        raise StudioError(f"columns: not JSON ({e.msg}); send an object like "
                          '{"instruction": "question", "output": "answer"}') from None
    if not isinstance(value, dict):
        raise StudioError("columns: must be a JSON object {standard field: your column}")
    return value
