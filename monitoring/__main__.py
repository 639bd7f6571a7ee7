"""``python -m monitoring drift`` (``make drift``): judge the champion on the latest window."""

from __future__ import annotations

from datetime import datetime

import typer

from stack.logs import configure_logging
from stack.settings import load_settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


@app.command()
def drift(
    until: datetime | None = typer.Option(
        None, help="window end (UTC); default: the latest feature time landed"
    ),
) -> None:
    """Drift and realized-performance reports; records a retraining trigger when due."""
    from monitoring.job import MonitoringError, run_monitoring
    from monitoring.report import render

    settings = load_settings()
    configure_logging(settings.logging)
    try:
        summary = run_monitoring(settings, until=until)
    except MonitoringError as exc:
        typer.echo(f"drift: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(render(summary))


@app.command()
def triggers(limit: int = typer.Option(10, help="most recent first")) -> None:
    """Recent retraining triggers and what became of them."""
    from stack import db

    settings = load_settings()
    db.migrate(settings)
    with db.connect(settings) as conn:
        rows = conn.execute(
            "SELECT trigger_id, created_at, model_version, status, new_version, reasons "
            "FROM retraining_triggers ORDER BY trigger_id DESC LIMIT %s",
            (limit,),
        ).fetchall()
    if not rows:
        typer.echo("no retraining triggers recorded")
    for tid, at, version, status, new, reasons in rows:
        typer.echo(f"#{tid} {at:%Y-%m-%d %H:%M} v{version} {status}"
                   + (f" -> v{new}" if new else ""))  # fmt: skip
        for r in reasons:
            typer.echo(f"    {r}")


if __name__ == "__main__":
    app()
