"""`tunelab studio`: the fine-tuning platform in the browser."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from tunelab.cli.common import err
from tunelab.studio.paths import TOKEN_ENV

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _token(auth: str | None, auth_file: Path | None) -> str | None:
    """The token from --auth / TUNELAB_STUDIO_TOKEN or from --auth-file (one of them), checked to be usable."""
    if auth_file is not None:
        if auth:
            err.print(f"[red]error[/]: give the token once: --auth-file, or --auth / {TOKEN_ENV}")
            raise typer.Exit(2)
        try:
            lines = auth_file.read_text(encoding="utf-8").strip().splitlines()
        except OSError as e:
            err.print(f"[red]error[/]: --auth-file {auth_file}: {e.strerror or e}")
            raise typer.Exit(2) from None
        auth = lines[0].strip() if lines else ""
        if not auth:
            err.print(f"[red]error[/]: --auth-file {auth_file} is empty; write the token on its first line")
            raise typer.Exit(2)
        if auth_file.stat().st_mode & 0o077:
            err.print(f"[yellow]warning[/]: {auth_file} can be read by other users; chmod 600 it")
    elif auth and os.environ.get(TOKEN_ENV) != auth:
        err.print(f"[yellow]note[/]: a token given with --auth is visible to other users in `ps`; prefer "
                  f"{TOKEN_ENV} or --auth-file")
    return auth.strip() if auth and auth.strip() else None  # an empty variable means no token


def studio(
    host: Annotated[str, typer.Option(help="Address to bind; anything but loopback needs a token (TUNELAB_STUDIO_TOKEN, --auth-file or --auth).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 7860,
    data_dir: Annotated[Path, typer.Option(help="Where datasets, jobs, runs and exports live.")] = Path("studio"),
    model_root: Annotated[list[Path] | None, typer.Option(
        help="Folder with local models (HF folders, .gguf files); repeatable. Default DATA_DIR/models.")] = None,
    slots: Annotated[int, typer.Option(help="Jobs that train at the same time.")] = 1,
    max_upload_mb: Annotated[float, typer.Option(help="Largest dataset upload.")] = 200.0,
    auth: Annotated[str | None, typer.Option(
        envvar=TOKEN_ENV, help="Token every request must carry (open /?token=TOKEN). Prefer the environment "
        f"variable {TOKEN_ENV} or --auth-file: a token on the command line shows in `ps`.")] = None,
    auth_file: Annotated[Path | None, typer.Option(
        help="Read the token from this file (first line, surrounding whitespace dropped); keep it chmod 600.")] = None,
) -> None:
    """Open the studio: upload data, start and watch jobs, compare runs, chat and export in the browser.

    Example: tunelab studio --data-dir studio   (then open http://127.0.0.1:7860)
    """
    auth = _token(auth, auth_file)
    if host not in LOOPBACK and not auth:
        err.print(f"[red]error[/]: binding {host} exposes the studio to the network; set a token with "
                  f"{TOKEN_ENV}=TOKEN or --auth-file FILE (or --auth TOKEN), or bind 127.0.0.1")
        raise typer.Exit(2)
    if slots < 1:
        err.print("[red]error[/]: --slots must be at least 1")
        raise typer.Exit(2)
    try:
        import uvicorn

        from tunelab.studio.app import create_app
        from tunelab.studio.paths import Settings
    except ImportError as e:
        err.print(f"[red]error[/]: the studio needs {e.name}; install it with `pip install 'tunelab[studio]'`")
        raise typer.Exit(1)
    settings = Settings(data_dir=data_dir, model_roots=model_root or [], slots=slots, max_upload_mb=max_upload_mb,
                        auth_token=auth)
    err.print(f"tunelab studio on http://{host}:{port} (data in {settings.data_dir}; API docs at /docs)")
    uvicorn.run(create_app(settings), host=host, port=port, log_level="warning")
