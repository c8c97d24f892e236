"""`tunelab studio` takes its token from TUNELAB_STUDIO_TOKEN or --auth-file, so it need not show in `ps`."""

from __future__ import annotations

import typer
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from tunelab.cli.studio import studio


def start(monkeypatch, tmp_path, args: list[str], env: dict | None = None):
    """Run the CLI up to uvicorn.run and return (exit code, output, the app it would serve)."""
    import uvicorn

    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.update(app=app, **kw))
    monkeypatch.delenv("TUNELAB_STUDIO_TOKEN", raising=False)
    app = typer.Typer()
    app.command()(studio)
    r = CliRunner().invoke(app, ["--data-dir", str(tmp_path / "studio"), *args], env=env)
    return r.exit_code, r.output, served.get("app")


def test_token_from_the_environment(monkeypatch, tmp_path):
    code, out, app = start(monkeypatch, tmp_path, ["--host", "0.0.0.0"], env={"TUNELAB_STUDIO_TOKEN": "sesame"})
    assert code == 0, out
    assert app.state.settings.auth_token == "sesame" and "visible to other users" not in out
    with TestClient(app) as c:
        assert c.get("/api/info").status_code == 401
        assert c.get("/api/info", headers={"Authorization": "Bearer sesame"}).status_code == 200


def test_token_from_a_file(monkeypatch, tmp_path):
    token = tmp_path / "token"
    token.write_text("open-sesame\n")
    token.chmod(0o600)
    code, out, app = start(monkeypatch, tmp_path, ["--host", "0.0.0.0", "--auth-file", str(token)])
    assert code == 0, out
    assert app.state.settings.auth_token == "open-sesame" and "warning" not in out
    token.chmod(0o644)
    code, out, app = start(monkeypatch, tmp_path, ["--auth-file", str(token)])
    assert code == 0 and "can be read by other users; chmod 600 it" in out


def test_bad_token_sources_are_refused(monkeypatch, tmp_path):
    empty = tmp_path / "empty"
    empty.write_text("\n")
    code, out, app = start(monkeypatch, tmp_path, ["--auth-file", str(empty)])
    assert code == 2 and "is empty; write the token on its first line" in out and app is None
    code, out, app = start(monkeypatch, tmp_path, ["--auth-file", str(tmp_path / "missing")])
    assert code == 2 and "--auth-file" in out and app is None
    token = tmp_path / "token"
    token.write_text("a")
    code, out, app = start(monkeypatch, tmp_path, ["--auth-file", str(token)], env={"TUNELAB_STUDIO_TOKEN": "b"})
    assert code == 2 and "give the token once" in out
    # an empty variable is no token: a public bind is still refused
    code, out, app = start(monkeypatch, tmp_path, ["--host", "0.0.0.0"], env={"TUNELAB_STUDIO_TOKEN": ""})
    assert code == 2 and "TUNELAB_STUDIO_TOKEN" in out


def test_a_token_on_the_command_line_still_works_with_a_note(monkeypatch, tmp_path):
    code, out, app = start(monkeypatch, tmp_path, ["--auth", "sesame"])
    assert code == 0 and app.state.settings.auth_token == "sesame"
    assert "visible to other users in `ps`" in out


def test_workers_do_not_inherit_the_token(monkeypatch, tmp_path):
    import subprocess

    from tunelab.studio.jobs import JobRunner
    from tunelab.studio.paths import Settings
    from tunelab.studio.store import JobStore

    monkeypatch.setenv("TUNELAB_STUDIO_TOKEN", "sesame")
    seen = {}

    class FakePopen:
        pid = 12345

        def __init__(self, argv, env, **kw):
            seen["env"] = env

    monkeypatch.setattr(subprocess, "Popen", FakePopen)
    settings = Settings(data_dir=tmp_path / "s")
    store = JobStore(settings.db)
    runner = JobRunner(settings, store)
    job_id = store.add("x", "data: {train: datasets/x.json}\n", str(settings.runs / "x"))
    runner._launch(store.get(job_id))
    assert "TUNELAB_STUDIO_TOKEN" not in seen["env"] and seen["env"]["PYTHONUNBUFFERED"] == "1"
