"""Export (on the Runs screen): a run's weights as merged safetensors, GGUF or an Ollama model under exports/."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from tunelab.studio import runs
from tunelab.studio.routes.deps import SettingsDep

router = APIRouter(tags=["runs"])


class ExportBody(BaseModel):
    format: str = Field(description="merged, gguf or ollama")
    name: str | None = Field(None, description="Output name under exports/ (default <run>-<format>).")
    quant: str | None = Field(None, description="gguf/ollama: f32, f16, bf16, q8_0, q6_k, q5_k_m, q4_k_m, q4_0 ...")


@router.post("/api/runs/{name}/export")
def run_export(name: str, body: ExportBody, settings: SettingsDep) -> dict:
    """Export merged / GGUF / Ollama to exports/ under the data dir; `label` says what was written
    (e.g. "GGUF q4_k_m (lora adapter merged into the base)" or "base model + prefix adapter side by side, NOT merged")."""
    done = runs.export_run(settings, name, body.format, body.name, body.quant)
    return {"path": str(done.path.relative_to(settings.data_dir)), "label": done.label, "merged": done.merged}
