"""Playground screen: chat with a run or its base model (same chat template), streamed as server-sent events."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from tunelab.studio import runs
from tunelab.studio.paths import StudioError
from tunelab.studio.routes.deps import CacheDep, SettingsDep
from tunelab.utils.userfiles import check_value

router = APIRouter(tags=["playground"])


class ChatBody(BaseModel):
    run: str
    target: str = Field("run", description="run = the trained model, base = its base model (same template)")
    messages: list[dict[str, Any]]
    max_new_tokens: int = Field(64, gt=0, le=1024)
    temperature: float = Field(0.0, ge=0, le=2)


@router.post("/api/chat")
def chat(body: ChatBody, settings: SettingsDep, cache: CacheDep) -> StreamingResponse:
    """Stream an answer as server-sent events: `data: {"text": piece}` ... `data: {"done": true}`."""
    runs.run_path(settings, body.run)  # 404 before the stream starts
    check_value({"messages": body.messages}, "chat", StudioError)  # a lone surrogate: 400, not an error mid-stream

    def events():
        try:
            for piece in runs.chat_stream(cache, settings, body.run, body.target, body.messages,
                                          body.max_new_tokens, body.temperature):
                yield f"data: {json.dumps({'text': piece})}\n\n"
            yield f"data: {json.dumps({'done': True})}\n\n"
        except Exception as e:  # noqa: BLE001 - the stream has started: report the error inside it
            yield f"data: {json.dumps({'error': str(e)})}\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")
