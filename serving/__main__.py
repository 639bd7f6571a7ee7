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
) -> None:
    """Consume vitals.raw, score every event, raise alerts."""
    from serving.scorer import main

    main(bounded=bounded, max_seconds=max_seconds, summary_json=summary_json)


@app.command()
def package() -> None:
    """Build a versioned Bento of the service with the champion model."""
    from serving.package import main

    main()


if __name__ == "__main__":
    app()
