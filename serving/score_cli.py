"""``make score``: one scoring process, or N worker processes of one consumer group.

The command of ``python -m serving score``. It lives apart from the scorer so that
``serving.workers`` (which runs scorers) and the scorer do not import each other.
"""

from __future__ import annotations

import json
import logging
import signal
from pathlib import Path

import typer

from serving.scorer import Scorer
from serving.summary import ScoreSummary
from serving.workers import run_workers, worker_settings
from stack.gctune import freeze_startup_heap
from stack.logs import configure_logging
from stack.resilience import OutageError
from stack.settings import load_settings

log = logging.getLogger("vigil.scorer")


# --------------------------------------------------------------------------- CLI
def main(
    bounded: bool = typer.Option(False, help="Stop after the topic has been idle for a while."),
    max_seconds: float = typer.Option(None, help="Stop after this many seconds."),
    summary_json: str = typer.Option(None, help="Also write the run's summary to this file."),
    workers: int = typer.Option(
        None, min=1, help="Scoring processes in the group (default: scorer.workers)."
    ),
    worker_index: int = typer.Option(None, hidden=True, help="Run as worker i of a parent."),
    parent_pid: int = typer.Option(None, hidden=True, help="A worker's parent process."),
) -> None:
    """Score every vital-sign event from Kafka with the served champion."""
    settings = load_settings()
    configure_logging(settings.logging)
    n = workers or settings.scorer.workers
    if worker_index is None and n > 1:
        s, codes = run_workers(settings, n, bounded=bounded, max_seconds=max_seconds)
        _report(s, summary_json)
        if any(codes):
            raise typer.Exit(1)
        return
    if worker_index is not None:
        settings = worker_settings(settings, worker_index)
    scorer = Scorer(settings)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: scorer.stop.set())
    # Full collections would otherwise walk the startup heap (~0.1 s) in mid-batch.
    log.info("startup heap frozen: %d objects", freeze_startup_heap())
    try:
        s = scorer.run(
            bounded=bounded,
            max_seconds=max_seconds,
            prepared=worker_index is not None,
            parent_pid=parent_pid,
        )
    except OutageError as exc:  # bounded: a dependency stayed away; nothing half-stored
        typer.echo(f"scoring stopped: {exc}", err=True)
        raise typer.Exit(3) from None
    if worker_index is not None:  # for the parent to merge: with the raw latencies
        Path(summary_json).write_text(json.dumps(s.to_dict(latencies=True), default=str))
        return
    _report(s, summary_json)


def _report(s: ScoreSummary, summary_json: str | None) -> None:
    d = s.to_dict()
    if summary_json:
        Path(summary_json).write_text(json.dumps(d, default=str, indent=1))
    typer.echo(
        f"scored {d['scored']:,} events ({d['events_per_s']:,.0f}/s), alerts {d['alerts']:,} "
        f"(suppressed {d['suppressed']:,}), invalid {sum(s.invalid.values()):,}, "
        f"latency p50 {d['latency_p50_ms']:.0f} ms p99 {d['latency_p99_ms']:.0f} ms, "
        f"models {dict(s.versions)}"
    )
