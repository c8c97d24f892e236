"""The studio's HTTP surface is frozen by a checked-in fixture: every (method, path) of /openapi.json, and
per operation its parameters, request body and response schemas (descriptions left out, so rewording a
docstring does not count as an API change). Moving routes between modules must leave both unchanged.

After a deliberate API change, rewrite the fixture and review its diff:
    PYTHONPATH=src python -m tests.studio.test_openapi_surface
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FIXTURE = Path(__file__).parent / "fixtures" / "openapi_surface.json"
METHODS = ("get", "put", "post", "delete", "patch", "options", "head", "trace")


def _drop_descriptions(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _drop_descriptions(v) for k, v in obj.items() if k not in ("description", "summary")}
    if isinstance(obj, list):
        return [_drop_descriptions(v) for v in obj]
    return obj


def surface(spec: dict) -> dict:
    """What a client depends on: routes, then each operation's inputs and outputs and the schemas they name."""
    ops = {}
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method not in METHODS:
                continue
            ops[f"{method.upper()} {path}"] = _drop_descriptions(
                {k: op.get(k) for k in ("operationId", "tags", "parameters", "requestBody", "responses")})
    return {"routes": sorted([m.upper(), p] for p, item in spec["paths"].items() for m in item if m in METHODS),
            "operations": ops,
            "schemas": _drop_descriptions(spec.get("components", {}).get("schemas", {}))}


def _spec(tmp_path: Path) -> dict:
    from fastapi.testclient import TestClient

    from tunelab.studio.app import create_app
    from tunelab.studio.paths import Settings

    with TestClient(create_app(Settings(data_dir=tmp_path / "studio"), start_worker=False)) as c:
        r = c.get("/openapi.json")
        assert r.status_code == 200, r.text
        return r.json()


def test_routes_are_the_checked_in_list(tmp_path):
    want = json.loads(FIXTURE.read_text(encoding="utf-8"))
    got = surface(_spec(tmp_path))
    assert {tuple(r) for r in got["routes"]} == {tuple(r) for r in want["routes"]}
    assert len(got["routes"]) == len(want["routes"])  # no duplicate registrations either


def test_operations_take_and_return_the_same_shapes(tmp_path):
    want = json.loads(FIXTURE.read_text(encoding="utf-8"))
    got = surface(_spec(tmp_path))
    for key, op in want["operations"].items():
        assert got["operations"].get(key) == op, key
    assert got["schemas"] == want["schemas"]


def test_unmatched_paths_and_pages_still_answer(tmp_path):
    """Outside the schema: the page, the bundled API reference and the static files are served as before."""
    from fastapi.testclient import TestClient

    from tunelab.studio.app import create_app
    from tunelab.studio.paths import Settings

    with TestClient(create_app(Settings(data_dir=tmp_path / "studio"), start_worker=False)) as c:
        assert "<html" in c.get("/").text.lower()
        assert "openapi.json" in c.get("/docs").text
        assert c.get("/static/app.js").status_code == 200
        assert c.get("/api/nope").status_code == 404


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        FIXTURE.parent.mkdir(exist_ok=True)
        FIXTURE.write_text(json.dumps(surface(_spec(Path(tmp))), indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {FIXTURE}")
