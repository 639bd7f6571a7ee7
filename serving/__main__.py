"""``python -m serving serve|stop|score|package``."""

from __future__ import annotations

import os

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


@app.command()
def serve() -> None:
    """Run the BentoML service in the foreground (Ctrl-C stops it)."""
    from serving.server import ServingProcess
    from stack.settings import load_settings

    proc = ServingProcess(load_settings())
    cmd = proc.command()
    typer.echo(
        f"serving @{proc.s.serving.model_alias} on {proc.url} (OpenAPI: {proc.url}/docs.json)"
    )
    os.execvp(cmd[0], cmd)


@app.command()
def stop() -> None:
    """Stop a service started in the background (by the demo); no-op when none runs."""
    from serving.server import ServingProcess
    from stack.settings import load_settings

    if ServingProcess(load_settings()).stop():
        typer.echo("stopped the BentoML service")


@app.command()
def score(
    bounded: bool = typer.Option(False, help="Stop once the topic has been idle a while."),
    max_seconds: float = typer.Option(None, help="Stop after this many seconds."),
    summary_json: str = typer.Option(None, help="Also write the run's summary to this file."),
    workers: int = typer.Option(
        None, min=1, help="Scoring processes in the group (default: scorer.workers)."
    ),
    worker_index: int = typer.Option(None, hidden=True, help="Run as worker i of a parent."),
    parent_pid: int = typer.Option(None, hidden=True, help="A worker's parent process."),
) -> None:
    """Consume vitals.raw, score every event, raise alerts."""
    from serving.score_cli import main

    main(
        bounded=bounded, max_seconds=max_seconds, summary_json=summary_json, workers=workers,
        worker_index=worker_index, parent_pid=parent_pid,
    )  # fmt: skip


@app.command()
def package() -> None:
    """Build a versioned Bento of the service with the champion model."""
    from serving.package import main

    main()


if __name__ == "__main__":
    app()
