"""Prometheus metrics of batch stages, through the node-exporter textfile collector.

Long-running parts (the scorer, the BentoML service) serve ``/metrics`` themselves.
Batch stages (landing, ETL, features, training, monitoring) end before any scrape, so
each run writes ``<run_dir>/metrics/<stage>.prom`` atomically; point node-exporter's
``--collector.textfile.directory`` at that folder (see ``conf/prometheus/``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

from stack.settings import Settings

LAST_SUCCESS = "vigil_stage_last_success_timestamp_seconds"
LAST_DURATION = "vigil_stage_last_duration_seconds"


def metrics_dir(settings: Settings) -> Path:
    return settings.run_path / "metrics"


def record_stage(
    settings: Settings,
    stage: str,
    *,
    seconds: float | None = None,
    gauges: Mapping[str, tuple[str, float]] | None = None,
    labels: Mapping[str, str] | None = None,
) -> Path:
    """Record a successful run of ``stage`` (and any stage-specific gauges).

    Args:
        seconds: how long the run took.
        gauges: ``metric name -> (help, value)``; names must be full Prometheus names.
        labels: extra labels on the stage-specific gauges (e.g. the model version).

    Returns:
        The ``.prom`` file written.
    """
    registry = CollectorRegistry()
    Gauge(LAST_SUCCESS, "Unix time of the stage's last successful run", ["stage"],
          registry=registry).labels(stage=stage).set(time.time())  # fmt: skip
    if seconds is not None:
        Gauge(LAST_DURATION, "Duration of the stage's last successful run", ["stage"],
              registry=registry).labels(stage=stage).set(seconds)  # fmt: skip
    names = ["stage", *sorted(labels or {})]
    for name, (doc, value) in (gauges or {}).items():
        g = Gauge(name, doc, names, registry=registry)
        g.labels(stage=stage, **dict(labels or {})).set(value)
    out = metrics_dir(settings)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{stage}.prom"
    write_to_textfile(str(path), registry)
    return path
