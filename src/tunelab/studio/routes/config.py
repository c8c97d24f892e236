"""New-job screen: the form generated from the config schema, the base models, validation and the estimate.

`ConfigBody` and `config_data` are also what the jobs router queues: a job's config is checked exactly
as the Validate button checks it.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from tunelab.studio import forms, runs
from tunelab.studio.paths import StudioError, job_name
from tunelab.studio.routes.deps import SettingsDep

router = APIRouter(tags=["config"])


class ConfigBody(BaseModel):
    name: str = Field("run", description="Run name; the run folder is runs/<name>.")
    values: dict[str, Any] | None = Field(None, description="Flat form values {key.path: YAML text or bool}.")
    config: dict[str, Any] | None = Field(None, description="A nested config (as in YAML) instead of values.")


class EstimateBody(ConfigBody):
    device: str = Field("auto", description="Device kind for the time estimate: auto, cpu, cuda or h100.")
    memory_gib: float | None = Field(None, gt=0, le=4096, description="Memory to fit in (GiB); null = the device's "
                                     "own (this machine's GPU or RAM; 24 for cuda, 80 for h100 when absent).")


def config_data(body: ConfigBody, name: str) -> dict:
    """The nested config a body describes (form values or a config), writing to runs/<name>."""
    data = body.config if body.config is not None else forms.config_from_form(body.values or {})
    data = dict(data)
    data["output_dir"] = f"runs/{name}"
    return data


@router.get("/api/schema")
def schema() -> dict:
    """Form fields generated from the config schema, and the JSON schema of RunCfg."""
    from tunelab.config import RunCfg

    return {"fields": forms.form_fields(), "json_schema": RunCfg.model_json_schema()}


@router.get("/api/models")
def models(settings: SettingsDep, facts: bool = True) -> list[dict]:
    """Base models: aliases, and HF folders / GGUF files under the model roots; with `facts` also parameters,
    context length, layers and size on disk (read from their configs; null where unknown). The first facts
    build model skeletons (seconds); `facts=false` answers at once."""
    from tunelab.studio.guide import model_facts

    listed = runs.list_models(settings)
    return [model_facts(settings, m) for m in listed] if facts else listed


@router.post("/api/config/validate")
def validate(body: ConfigBody, settings: SettingsDep) -> dict:
    """Check a config like `tunelab train` does; returns the YAML and the command, or 422 with the problems."""
    name = job_name(body.name)
    data = config_data(body, name)
    forms.check_config(data, settings)
    return {"yaml": forms.to_yaml(data), "cli": forms.cli_command(settings, f"{name}.yaml")}


@router.post("/api/estimate")
def estimate(body: EstimateBody, settings: SettingsDep) -> dict:
    """Memory and time of a config before it starts (same body as validate; 422 with the same problems), and
    `fit`: whether it fits the memory budget, with fixes (form values) that make it fit when it does not."""
    from tunelab.estimate import EstimateError, estimate_run, format_estimate
    from tunelab.studio.guide import fit_check

    name = job_name(body.name)
    cfg = forms.check_config(config_data(body, name), settings)
    n_samples = forms.count_train_samples(cfg, settings)
    try:
        est = estimate_run(cfg, n_samples, None, body.device)
        fit = fit_check(cfg, est, n_samples, body.device, body.memory_gib)
    except EstimateError as e:
        raise StudioError(str(e)) from None
    return {**est, "text": format_estimate(est), "fit": fit}
