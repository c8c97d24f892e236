"""`tunelab studio`: the fine-tuning platform in the browser."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tunelab.cli.common import err

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def studio(
    host: Annotated[str, typer.Option(help="Address to bind; anything but loopback needs --auth.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 7860,
    data_dir: Annotated[Path, typer.Option(help="Where datasets, jobs, runs and exports live.")] = Path("studio"),
    model_root: Annotated[list[Path] | None, typer.Option(
        help="Folder with local models (HF folders, .gguf files); repeatable. Default DATA_DIR/models.")] = None,
    slots: Annotated[int, typer.Option(help="Jobs that train at the same time.")] = 1,
    max_upload_mb: Annotated[float, typer.Option(help="Largest dataset upload.")] = 200.0,
    auth: Annotated[str | None, typer.Option(help="Token every request must carry (open /?token=TOKEN).")] = None,
) -> None:
    """Open the studio: upload data, start and watch jobs, compare runs, chat and export in the browser.

    Example: tunelab studio --data-dir studio   (then open http://127.0.0.1:7860)
    """
    if host not in LOOPBACK and not auth:
        err.print(f"[red]error[/]: binding {host} exposes the studio to the network; pass --auth TOKEN "
                  "(or bind 127.0.0.1)")
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
