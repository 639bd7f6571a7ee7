"""``python -m training train|promote|rollback|history`` (``make train`` etc.)."""

from __future__ import annotations

import typer

from stack.logs import configure_logging
from stack.settings import load_settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


@app.command()
def train() -> None:
    """Tune every family, register the best as @challenger, write its model card."""
    from training.job import main

    main()


@app.command()
def promote() -> None:
    """Gate @challenger against @champion and NEWS2 on held-out patients; promote if it passes."""
    from stack.registry import RegistryError
    from training.promotion import run_promote

    settings = load_settings()
    configure_logging(settings.logging)
    try:
        r = run_promote(settings)
    except RegistryError as exc:
        typer.echo(f"promote: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(
        f"gate on {r.gate_patients} held-out patients ({r.gate_rows:,} rows; "
        f"{r.excluded_patients} excluded as seen by the champion):"
    )
    for line in r.decision.reasons:
        typer.echo(f"  {line}")
    if r.promoted:
        typer.echo(f"promoted v{r.challenger} to @champion (was {r.champion_before or 'none'})")
    else:
        typer.echo(
            f"kept @champion {r.champion_before or 'none'}; v{r.challenger} stays @challenger"
        )


@app.command()
def rollback() -> None:
    """Restore the previous @champion."""
    from stack.registry import ModelRegistry, RegistryError

    settings = load_settings()
    configure_logging(settings.logging)
    try:
        old, new = ModelRegistry(settings).rollback()
    except RegistryError as exc:
        typer.echo(f"rollback: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"@champion moved back from v{old} to v{new}")


@app.command()
def history() -> None:
    """Every registered version with its aliases, gate verdict and promotions."""
    from stack.registry import ModelRegistry

    settings = load_settings()
    reg = ModelRegistry(settings)
    for v in reg.versions():
        t = v.tags
        typer.echo(
            f"v{v.version:<4} {','.join(v.aliases) or '-':<20} {v.family or '?':<20} "
            f"ROC {t.get('test_roc_auc', '?'):<7} PR {t.get('test_pr_auc', '?'):<7} "
            f"gate {t.get('gate_decision', '-'):<8} promoted {t.get('promoted_at', '-')} "
            f"rolled back {t.get('rolled_back_at', '-')}"
        )


if __name__ == "__main__":
    app()
