"""``python -m stack up|down|status``: manage the embedded local stack."""

from __future__ import annotations

import json

import typer

from stack.localstack import PG_CREDENTIALS, StackError, down, endpoints, mask_url, status, up
from stack.settings import Settings, load_settings

app = typer.Typer(add_completion=False, help=__doc__)


@app.command("up")
def up_cmd() -> None:
    """Start the embedded services that are not running (idempotent)."""
    settings = load_settings()
    try:
        actions = up(settings)
    except StackError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    ep = endpoints(settings)
    for name, action in actions.items():
        typer.echo(f"{name:9} {action}")
    typer.echo(f"kafka     {ep.bootstrap_servers}  (memory storage: land events promptly)")
    typer.echo(f"postgres  {mask_url(ep.database_url)}  (password: {_creds_hint(settings)})")
    typer.echo(f"mlflow UI {ep.mlflow_uri}")


@app.command("down")
def down_cmd() -> None:
    """Stop every embedded service and its child processes."""
    for name, was in down(load_settings()).items():
        typer.echo(f"{name:9} {'stopped' if was else 'not running'}")


def _creds_hint(settings: Settings) -> str:
    if settings.postgres.url:
        return "as configured"
    return f"{settings.run_path / 'postgres' / PG_CREDENTIALS}, owner-only"


@app.command("status")
def status_cmd() -> None:
    """Show pid, address and health of each embedded service (JSON)."""
    typer.echo(json.dumps(status(load_settings()), indent=2))


if __name__ == "__main__":
    app()
