"""The studio's HTTP API, one APIRouter per screen; `tunelab.studio.app.create_app` includes them in this order.

    datasets    /api/datasets...              upload, inspect, column mapping, prepare, delete
    config      /api/schema, /api/models,     the New-job form: fields, base models, validation,
                /api/config/validate,         memory/time estimate
                /api/estimate
    guide       /api/presets, /api/guide,     the guided flow: presets, tasks, method trade-offs,
                /api/recommend, /api/runs/diff recommended settings; two runs' config diff
    jobs        /api/jobs...                  queue, list, watch, cancel, resume
    runs        /api/runs...                  run list, metrics, evals (tables, compare, eval against base), report
    export      /api/runs/{name}/export       merged / GGUF / Ollama
    playground  /api/chat                     streamed chat with a run or its base model
    pages       /api/info, /docs, /           studio facts, the bundled API reference, the page

Routes get what they share (settings, job store, runner, model cache) through the dependencies in
`deps`, which read them from `app.state`; nothing is captured in a closure.
"""

from tunelab.studio.routes import (
    config,
    datasets,
    export,
    guide,
    jobs,
    pages,
    playground,
    runs,
)

ROUTERS = (datasets.router, config.router, guide.router, jobs.router, runs.router, export.router, playground.router,
           pages.router)
"""Every router, in the order the API (and /openapi.json) lists them."""

__all__ = ["ROUTERS"]
