"""Where data lives: every lake zone and PostgreSQL table, declared once.

Stages, benchmarks and the demo take locations from here and nowhere else; a zone that
depends on the feature-set version is a function of it (a version bump moves every reader
and writer together). Lake paths are relative to ``lake.root``.

PostgreSQL tables are created by the numbered migrations of ``stack.db`` (history: they
never change) and named in SQL where they are used; this module declares each one with
the stage that owns it, and ``tests/unit/test_catalog.py`` checks that the migrations
create exactly these tables and that the code's SQL names no other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa


@dataclass(frozen=True)
class Location:
    """A lake zone or a table: its name, the stage that writes it, what it holds."""

    name: str
    writer: str
    holds: str


# --------------------------------------------------------------------------- partitions
# Every time-partitioned zone is split by UTC hour: ``date=YYYY-MM-DD/hour=HH``.
_PARTITION = re.compile(r"^date=(\d{4}-\d{2}-\d{2})/hour=([01]\d|2[0-3])$")


def partition_of(hour: datetime) -> str:
    """The partition name of the hour that holds ``hour`` (a UTC time)."""
    return f"date={hour:%Y-%m-%d}/hour={hour:%H}"


def hour_of(partition: str) -> datetime:
    """The start of the hour a partition name stands for.

    Raises:
        ValueError: not of the form ``date=YYYY-MM-DD/hour=HH``.
    """
    m = _PARTITION.match(partition)
    if not m:
        raise ValueError(f"not a partition name: {partition!r} (want date=YYYY-MM-DD/hour=HH)")
    day = datetime.strptime(m.group(1), "%Y-%m-%d")
    return day.replace(hour=int(m.group(2)), tzinfo=UTC)


def by_hour(table: pa.Table, ts_col: str) -> dict[str, pa.Table]:
    """Split ``table`` by the UTC hour of ``ts_col`` → ``{partition: rows}``.

    The times must be within the contract's range (``stack.contracts``): every writer
    partitions by a time it has bounded, never by a producer's value as it came.
    """
    if table.num_rows == 0:
        return {}
    us = table.column(ts_col).cast(pa.int64()).to_numpy(zero_copy_only=False)
    hours = us // 3_600_000_000
    out = {}
    for h in np.unique(hours).tolist():
        out[partition_of(datetime.fromtimestamp(h * 3600, UTC))] = table.filter(
            pa.array(hours == h)
        )
    return out


# --------------------------------------------------------------------------- lake zones
RAW_VITALS = "raw/vitals"
RAW_OUTCOMES = "raw/outcomes"
RAW_ADMISSIONS = "raw/admissions"
RAW_DEAD = "raw/deadletter"
PROCESSED_VITALS = "processed/vitals_minute"
QUARANTINE = "processed/quarantine"
STAGING = "_staging"  # tasks' files until their job publishes them (never read as a zone)
LANDING_STATE = "_landing"  # the lander's journal and run summaries, per consumer group


def features_zone(feature_set_version: str) -> str:
    return f"features/{feature_set_version}"


def labels_zone(feature_set_version: str) -> str:
    return f"labels/{feature_set_version}"


def labels_file(feature_set_version: str) -> str:
    return f"{labels_zone(feature_set_version)}/labels.parquet"


def staging_zone(job: str) -> str:
    """Where one job's tasks write before publishing (``etl``, ``features/<version>``)."""
    return f"{STAGING}/{job}"


def landing_journal(group_id: str, run_id: str) -> str:
    """One lander run's write-ahead journal (landers of a group each keep their own)."""
    return f"{landing_journals(group_id)}/{run_id}.json"


def landing_journals(group_id: str) -> str:
    """The folder of a group's journals (``pending.json`` beside it: before 2026-12)."""
    return f"{LANDING_STATE}/{group_id}/pending"


def landing_runs(group_id: str) -> str:
    """The lander's run summaries (one JSON per run) for a consumer group."""
    return f"{LANDING_STATE}/{group_id}/runs"


def landing_run(group_id: str, run_id: str) -> str:
    return f"{landing_runs(group_id)}/{run_id}.json"


# The champion's reference sample for drift monitoring: a Parquet artifact of the training
# run holding ``patient_id``, ``ts``, every feature, ``label``, ``risk`` (out-of-sample:
# out-of-fold for training patients, the refit model for held-out ones) and ``split``.
REFERENCE_ARTIFACT = "reference/reference.parquet"


# --------------------------------------------------------------------------- tables
def features_table(feature_set_version: str) -> str:
    return "features_" + feature_set_version.replace("-", "_")


TABLES: tuple[Location, ...] = (
    Location("schema_migrations", "stack.db", "applied migrations"),
    Location("vitals_minute", "pipelines.etl", "one row per patient-minute, hour partitions"),
    Location("quarantine", "pipelines.etl", "raw rows with impossible times"),
    Location("etl_partitions", "pipelines.etl", "per raw hour: fingerprint and reconciliation"),
    Location("etl_runs", "pipelines.etl", "one row per ETL run"),
    Location("feature_partitions", "pipelines.features", "per hour and feature-set version"),
    Location("feature_runs", "pipelines.features", "one row per feature run"),
    Location("feature_labels", "pipelines.features", "the label of every feature row"),
    Location("predictions", "serving.scorer", "one champion (and shadow) row per event"),
    Location("alerts", "serving.scorer", "alerts raised, with their explanation"),
    Location("scoring_dead_letters", "serving.scorer", "events refused, with reason and bytes"),
    Location("stay_baselines", "serving.scorer", "each stay's first minute and first hours"),
    Location("monitoring_runs", "monitoring", "one summary per drift/performance run"),
    Location("retraining_triggers", "monitoring", "triggers and what became of them"),
)
# Tables made by code rather than by a migration: one per feature-set version.
VERSIONED_TABLES = (features_table,)

LAKE: tuple[Location, ...] = (
    Location(RAW_VITALS, "pipelines.landing", "vital-sign events as landed, by event hour"),
    Location(RAW_OUTCOMES, "pipelines.landing", "deterioration outcomes, by event hour"),
    Location(RAW_ADMISSIONS, "pipelines.landing", "the ADT feed, by event hour"),
    Location(RAW_DEAD, "pipelines.landing", "dead letters with reason and bytes, by landed hour"),
    Location(PROCESSED_VITALS, "pipelines.etl", "one row per patient-minute, by hour"),
    Location(QUARANTINE, "pipelines.etl", "raw rows with impossible times, by hour"),
    Location("features/<version>", "pipelines.features", "feature rows, by hour"),
    Location("labels/<version>", "pipelines.features", "the label of every feature row"),
)
