"""``python -m ops retrain-if-needed`` (``make retrain-if-needed``)."""

from __future__ import annotations

from datetime import datetime

import typer

from stack.logs import configure_logging
from stack.settings import load_settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


@app.callback()
def _group() -> None:
    """Jobs that chain stages."""


@app.command("retrain-if-needed")
def retrain_if_needed(
    until: datetime | None = typer.Option(
        None, help="monitoring window end (UTC); default: the latest feature time landed"
    ),
) -> None:
    """Run monitoring; when it triggers, retrain on the sliding window and gate the result."""
    from monitoring.job import MonitoringError
    from monitoring.report import render
    from ops.retrain import retrain_if_needed as run
    from training.job import TrainingDataError

    settings = load_settings()
    configure_logging(settings.logging)
    try:
        out = run(settings, until=until)
    except (MonitoringError, TrainingDataError) as exc:
        typer.echo(f"retrain-if-needed: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(render(out.monitoring))
    if out.action in ("none", "skipped"):
        typer.echo(f"no retraining: {out.detail}")
        return
    t = out.training
    assert t is not None
    typer.echo(
        f"retrained on {out.since:%Y-%m-%d %H:%M} .. {out.until:%Y-%m-%d %H:%M}: "
        f"v{t.model_version} ({t.family}) test ROC-AUC {t.test['roc_auc']:.3f}"
    )
    typer.echo(f"gate: {out.action}; {out.detail}")


if __name__ == "__main__":
    app()
