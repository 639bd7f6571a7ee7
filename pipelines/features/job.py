"""Processed vitals → feature table and labels (``make features``).

One run:

1. **Plan** — processed hour partitions (``etl_partitions``) that are new or re-processed
   since their features were computed with this feature-set version
   (``feature_partitions``), plus the ``cascade_hours`` after each (their 240-minute
   windows look back into it).
2. **Compute** — Spark reads the processed zone for the patients present in those hours
   (their whole stay so far: the baseline needs its first hours), partitions by patient,
   sorts by minute and calls :func:`features.transform.patient_feature_arrays` — the same
   transform the scorer runs online — at the configured cadence. Each task writes its
   rows for the target hours to Parquet under ``_staging/features/<version>/<run>/`` and
   reports the files.
3. **Publish** the reported files into the feature zone ``features/<version>/date=…/hour=…``
   (each computed hour's old files replaced), then load the PostgreSQL table
   ``features_<version>`` by binary ``COPY``, replacing each hour in one transaction with
   its ``feature_partitions`` row, ``postgres.load_connections`` hours at a time.
4. **Label** every feature row from the landed outcomes (:func:`features.labels.make_labels`)
   into ``labels/<version>`` and the ``feature_labels`` table. Labels are rebuilt whenever
   features or outcomes changed: a row censored yesterday may be labelled today.

A rerun with nothing new does nothing. The feature-set version is recorded in every
feature row's table name and path, in ``feature_partitions`` and in ``feature_runs``.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from itertools import pairwise
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import psycopg
import pyarrow as pa
import typer

from features.labels import make_labels
from features.spec import (
    FEATURE_NAMES,
    FEATURE_SET_VERSION,
    FEATURES_TABLE,
    FEATURES_ZONE,
    LABELS_FILE,
    LABELS_ZONE,
)
from features.transform import patient_feature_arrays, static_vector
from stack.catalog import (
    PROCESSED_VITALS,
    RAW_ADMISSIONS,
    RAW_OUTCOMES,
    hour_of,
    partition_of,
    staging_zone,
)
from stack.db import connect, copy_table, load_partitions, migrate, transaction
from stack.lake import Lake
from stack.logs import configure_logging
from stack.metrics import record_stage
from stack.settings import Settings, load_settings
from stack.spark import spark_session
from stack.sparkjob import JobStatus, StagedWriter, by_patient, publish, staged_files

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger("vigil.features")

STATIC_COLUMNS = ("age", "sex", "spo2_scale")
# Where tasks write their files until the driver publishes them (outside the zone, so
# that no reader of the zone ever sees them).
STAGING_ZONE = staging_zone(FEATURES_ZONE)


def features_ddl() -> str:
    """The feature table, declared from the feature spec (one table per version)."""
    cols = ",\n".join(f"    {n} double precision" for n in FEATURE_NAMES)
    return (
        f"CREATE TABLE IF NOT EXISTS {FEATURES_TABLE} (\n"
        "    patient_id text NOT NULL,\n    ts timestamptz NOT NULL,\n"
        f"{cols},\n    partition text NOT NULL,\n    PRIMARY KEY (patient_id, ts)\n);\n"
        f"CREATE INDEX IF NOT EXISTS {FEATURES_TABLE}_partition ON {FEATURES_TABLE} (partition);"
    )


@dataclass
class FeatureSummary:
    run_id: str
    status: str = JobStatus.RUNNING
    pending: list[str] = field(default_factory=list)
    feature_rows: int = 0
    patients: int = 0
    labels: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    feature_set_version: str = FEATURE_SET_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


STAGED_SCHEMA = "kind string, zone string, partition string, file string, rows long"
FLUSH_ROWS = 200_000  # a task writes its buffered feature rows once it holds this many
FEATURE_FILES = "features"  # the one kind of file a feature task writes


def _feature_table(
    pids: list[str], counts: list[int], ts: npt.NDArray[np.datetime64], values: npt.NDArray[Any]
) -> pa.Table:
    """Feature rows as Arrow: NaN (a feature with no data) becomes null, as in PostgreSQL."""
    cols: dict[str, pa.Array] = {
        "patient_id": pa.array(np.repeat(np.array(pids, dtype=object), counts), pa.string()),
        "ts": pa.array(ts.astype("datetime64[us]"), pa.timestamp("us", "UTC")),
    }
    for i, name in enumerate(FEATURE_NAMES):
        cols[name] = pa.array(values[:, i], pa.float64(), from_pandas=True)
    return pa.table(cols)


def _features_partition(
    cadence: int, since: datetime, targets: frozenset[str], lake_root: str, staging: str
) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """The ``mapInPandas`` body: features for a partition's patients, written by the task.

    The Python worker writes its rows to Parquet itself (pyarrow) under ``staging``, one
    file per target hour per flush, named by task and attempt, and yields only what it
    wrote: ``file`` rows (hour, path, rows) and one ``task`` row (patients with features).
    Handing 125 doubles a row back to the JVM and writing them from there cost more than
    computing them. The driver publishes the files that successful tasks reported
    (:meth:`FeatureJob._publish`); a failed attempt's files are never reported, so never
    published.
    """

    def body(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        writer = StagedWriter(lake_root, staging, FLUSH_ROWS)
        start = pd.Timestamp(since)
        patients = 0
        for pdf in by_patient(batches):
            # cache=False: the cache check alone costs more than the conversion.
            pdf["minute"] = pd.to_datetime(pdf["minute"], utc=True, cache=False)
            ids = pdf["patient_id"].to_numpy()
            cuts = [0, *(np.flatnonzero(ids[1:] != ids[:-1]) + 1).tolist(), len(pdf)]
            pids, counts, stamps, blocks = [], [], [], []
            for lo, hi in pairwise(cuts):
                g = pdf.iloc[lo:hi]
                first = g.iloc[0]
                static = static_vector(
                    {c: first[c] for c in STATIC_COLUMNS} if pd.notna(first["sex"]) else None
                )
                ts, values = patient_feature_arrays(g, static, cadence_minutes=cadence, since=start)
                if len(ts):
                    pids.append(ids[lo])
                    counts.append(len(ts))
                    stamps.append(ts)
                    blocks.append(values)
            if not pids:
                continue
            ts = np.concatenate(stamps)
            # A row at minute m + 1 describes minute m: it belongs to m's hour.
            hours = (ts - np.timedelta64(1, "m")).astype("datetime64[h]")
            order = np.argsort(hours, kind="stable")  # patient, time within each hour
            table = _feature_table(pids, counts, ts, np.concatenate(blocks)).take(order)
            owner = np.repeat(np.arange(len(pids)), counts)[order]
            hours = hours[order]
            seen = np.zeros(len(pids), dtype=np.bool_)
            edges = np.flatnonzero(np.diff(hours.astype(np.int64))) + 1
            for lo, hi in pairwise([0, *edges.tolist(), len(hours)]):
                q = partition_of(hours[lo].item())
                if q in targets:
                    seen[owner[lo:hi]] = True
                    writer.add(FEATURE_FILES, q, table.slice(lo, hi - lo))
            patients += int(seen.sum())
        writer.flush()
        files = writer.files()
        n = len(files["file"])
        yield pd.DataFrame(
            {
                "kind": ["file"] * n + ["task"],
                "zone": [*files["zone"], None],
                "partition": [*files["partition"], None],
                "file": [*files["file"], None],
                "rows": [*files["rows"], patients],
            }
        )

    return body


class FeatureJob:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.cfg = settings.features
        self.lake = Lake(settings.resolve(settings.lake.root))

    # ------------------------------------------------------------------ plan
    def _ensure_schema(self) -> None:
        migrate(self.settings)
        with transaction(self.settings) as conn:
            conn.execute(features_ddl())

    def plan(self, force: bool = False) -> list[str]:
        """Processed hours whose features are missing or stale, plus their cascade."""
        with connect(self.settings) as conn:
            processed = dict(conn.execute("SELECT partition, processed_at FROM etl_partitions"))
            done = dict(
                conn.execute(
                    "SELECT partition, etl_processed_at FROM feature_partitions"
                    " WHERE feature_set_version = %s",
                    (FEATURE_SET_VERSION,),
                )
            )
        changed = {q for q, at in processed.items() if force or done.get(q) != at}
        hours = {hour_of(q) for q in changed}
        cascade = {
            partition_of(h + timedelta(hours=k))
            for h in hours
            for k in range(1, self.cfg.cascade_hours + 1)
        }
        return sorted(changed | (cascade & processed.keys()))

    # ------------------------------------------------------------------ run
    def run(self, *, force: bool = False) -> FeatureSummary:
        summary = FeatureSummary(run_id=uuid.uuid4().hex[:12])
        t0 = time.monotonic()
        self._ensure_schema()
        pending = self.plan(force=force)
        summary.pending = pending
        outcomes_fp = self._outcomes_fingerprint()
        if not pending and outcomes_fp == self._last_outcomes_fingerprint():
            summary.status = JobStatus.NOTHING_TO_DO
            summary.seconds = time.monotonic() - t0
            return summary
        self._record_run(summary, started=True)
        try:
            if pending:
                self._compute(pending, summary)
            summary.labels = self._label(summary)
            summary.status = JobStatus.SUCCEEDED
        except Exception as exc:
            summary.status = JobStatus.FAILED
            summary.seconds = time.monotonic() - t0
            self._record_run(summary, error=f"{type(exc).__name__}: {exc}")
            raise
        summary.seconds = time.monotonic() - t0
        self._record_run(summary, outcomes_fingerprint=outcomes_fp)
        log.info("features done", extra={"stage": "features", **summary.to_dict()})
        return summary

    def _compute(self, pending: list[str], summary: FeatureSummary) -> None:
        from pyspark.sql import functions as F  # noqa: N812

        spark = spark_session(self.settings, "vigil-features")
        t = time.monotonic()
        minutes = self._read_processed(spark)
        hours = [hour_of(q) for q in pending]
        since, until = min(hours), max(hours) + timedelta(hours=1)
        minute_ts = F.col("minute")
        in_targets = minutes.filter(
            F.date_format(minute_ts, "'date='yyyy-MM-dd'/hour='HH").isin(pending)
        )
        patients = in_targets.select("patient_id").distinct()
        history = minutes.filter(minute_ts < F.lit(until)).join(patients, "patient_id")
        static = self._static(spark)
        if static is not None:
            history = history.join(static, "patient_id", "left")
        else:
            for c in STATIC_COLUMNS:
                history = history.withColumn(c, F.lit(None).cast("string"))
        staging = f"{STAGING_ZONE}/{summary.run_id}"
        body = _features_partition(
            self.cfg.cadence_minutes, since, frozenset(pending), self.lake.uri, staging
        )
        try:
            reported = (
                history.repartition(self.settings.spark.shuffle_partitions, "patient_id")
                .sortWithinPartitions("patient_id", "minute")
                .mapInPandas(body, STAGED_SCHEMA)
                .collect()
            )
            rows = [r.asDict() for r in reported]
            summary.feature_rows = sum(r["rows"] for r in rows if r["kind"] == "file")
            summary.patients = sum(r["rows"] for r in rows if r["kind"] == "task")
            summary.timings["compute_s"] = round(time.monotonic() - t, 2)

            t = time.monotonic()
            self._publish(pending, staged_files(rows).get(FEATURE_FILES, {}))
            summary.timings["lake_s"] = round(time.monotonic() - t, 2)
        finally:
            self.lake.delete_dir(staging)

        t = time.monotonic()
        self._load_postgres(pending, summary.run_id)
        summary.timings["postgres_s"] = round(time.monotonic() - t, 2)

    def _publish(self, pending: list[str], files: dict[str, list[str]]) -> None:
        """Replace each computed hour's files in the feature zone with the staged ones."""
        publish(self.lake, FEATURES_ZONE, pending, files)

    def _load_postgres(self, pending: list[str], run_id: str) -> None:
        """Each hour replaces its rows in one transaction, ``postgres.load_connections`` at once."""
        with connect(self.settings) as conn:
            etl_at = dict(conn.execute("SELECT partition, processed_at FROM etl_partitions"))

        def load(conn: psycopg.Connection[tuple], q: str) -> None:  # type: ignore[type-arg]
            table = self.lake.read_table(f"{FEATURES_ZONE}/{q}")
            conn.execute(f"DELETE FROM {FEATURES_TABLE} WHERE partition = %s", (q,))
            if table.num_rows:
                # The tasks wrote a missing feature as null (_feature_table), as it is here.
                table = table.append_column("partition", pa.array([q] * table.num_rows))
                columns = ["patient_id", "ts", *FEATURE_NAMES, "partition"]
                # Binary: the table's DDL comes from the same spec (features_ddl).
                copy_table(conn, FEATURES_TABLE, table.select(columns), binary=True)
            conn.execute(
                """
                INSERT INTO feature_partitions (partition, feature_set_version, run_id,
                    etl_processed_at, computed_at, rows)
                VALUES (%s, %s, %s, %s, now(), %s)
                ON CONFLICT (partition, feature_set_version) DO UPDATE SET
                    run_id = EXCLUDED.run_id, etl_processed_at = EXCLUDED.etl_processed_at,
                    computed_at = EXCLUDED.computed_at, rows = EXCLUDED.rows
                """,
                (q, FEATURE_SET_VERSION, run_id, etl_at.get(q), table.num_rows),
            )

        load_partitions(self.settings, pending, load)

    def _read_processed(self, spark: SparkSession) -> DataFrame:
        df = spark.read.parquet(f"{self.lake.uri}/{PROCESSED_VITALS}")
        return df.drop("date", "hour")

    def _static(self, spark: SparkSession) -> DataFrame | None:
        adm = self.lake.read_table(RAW_ADMISSIONS)
        if adm.num_rows == 0:
            return None
        pdf = (
            adm.select(["patient_id", "ts", *STATIC_COLUMNS])
            .to_pandas()
            .sort_values("ts")
            .drop_duplicates("patient_id", keep="last")  # a readmission's facts win
        )
        pdf = pdf[["patient_id", *STATIC_COLUMNS]].astype(
            {"sex": "object", "age": "float64", "spo2_scale": "float64"}
        )
        return spark.createDataFrame(
            pdf, "patient_id string, age double, sex string, spo2_scale double"
        )

    # ------------------------------------------------------------------ labels
    def _label(self, summary: FeatureSummary) -> dict[str, int]:
        t = time.monotonic()
        keys = self.lake.read_table(FEATURES_ZONE, columns=["patient_id", "ts"]).to_pandas()
        outcomes = self.lake.read_table(RAW_OUTCOMES)
        outcomes_df = (
            outcomes.select(["patient_id", "ts", "kind"]).to_pandas()
            if outcomes.num_rows
            else pd.DataFrame(
                {"patient_id": [], "ts": pd.Series([], dtype="datetime64[us, UTC]"), "kind": []}
            )
        )
        with connect(self.settings) as conn:
            row = conn.execute("SELECT max(minute) FROM vitals_minute").fetchone()
        if keys.empty:
            return {}
        # Outcomes are known up to where the processed vitals reach (the landing horizon).
        horizon_end = row[0] if row and row[0] else keys["ts"].max()
        observed_until = pd.Timestamp(horizon_end) + pd.Timedelta(minutes=1)
        labels = make_labels(
            keys,
            outcomes_df,
            horizon=pd.Timedelta(hours=self.cfg.horizon_hours),
            observed_until=observed_until,
        )
        labels["horizon_hours"] = float(self.cfg.horizon_hours)
        table = pa.Table.from_pandas(labels, preserve_index=False)
        for rel in self.lake.files(LABELS_ZONE, suffix=""):
            self.lake.delete(rel)
        self.lake.write_parquet(table, LABELS_FILE)
        with transaction(self.settings) as conn:
            conn.execute(
                "DELETE FROM feature_labels WHERE feature_set_version = %s", (FEATURE_SET_VERSION,)
            )
            rows = table.set_column(
                table.schema.get_field_index("label"), "label", table["label"].cast(pa.int16())
            ).append_column("feature_set_version", pa.array([FEATURE_SET_VERSION] * table.num_rows))
            copy_table(conn, "feature_labels", rows, binary=True)  # label is a smallint there
        counts = labels["label_status"].value_counts().to_dict()
        counts["positive"] = int((labels["label"] == 1).sum())
        summary.timings["labels_s"] = round(time.monotonic() - t, 2)
        return {str(k): int(v) for k, v in counts.items()}

    def _outcomes_fingerprint(self) -> str:
        files = sorted(self.lake.files(RAW_OUTCOMES))
        return hashlib.sha256("\n".join(files).encode()).hexdigest()[:16]

    def _last_outcomes_fingerprint(self) -> str | None:
        with connect(self.settings) as conn:
            row = conn.execute(
                "SELECT outcomes_fingerprint FROM feature_runs WHERE status = 'succeeded'"
                " AND feature_set_version = %s ORDER BY finished_at DESC LIMIT 1",
                (FEATURE_SET_VERSION,),
            ).fetchone()
        return row[0] if row else None

    def _record_run(
        self,
        s: FeatureSummary,
        *,
        started: bool = False,
        error: str | None = None,
        outcomes_fingerprint: str | None = None,
    ) -> None:
        with transaction(self.settings) as conn:
            if started:
                conn.execute(
                    "INSERT INTO feature_runs (run_id, feature_set_version, started_at, status)"
                    " VALUES (%s, %s, now(), 'running')",
                    (s.run_id, FEATURE_SET_VERSION),
                )
                return
            conn.execute(
                """
                UPDATE feature_runs SET finished_at = now(), status = %s, partitions = %s,
                    feature_rows = %s, labelled = %s, positive = %s, censored = %s,
                    outcomes_fingerprint = %s, error = %s, seconds = %s
                WHERE run_id = %s
                """,
                (
                    s.status, s.pending, s.feature_rows, s.labels.get("labelled"),
                    s.labels.get("positive"), s.labels.get("censored"), outcomes_fingerprint,
                    error, s.seconds, s.run_id,
                ),
            )  # fmt: skip


def run_features(settings: Settings, *, force: bool = False) -> FeatureSummary:
    """Entry point shared by ``make features``, the Airflow task and the tests."""
    summary = FeatureJob(settings).run(force=force)
    record_stage(settings, "features", seconds=summary.seconds)
    return summary


def main(force: bool = typer.Option(False, help="Recompute every processed hour.")) -> None:
    """Compute features for new processed hours and rebuild the labels."""
    settings = load_settings()
    configure_logging(settings.logging)
    s = run_features(settings, force=force)
    typer.echo(
        f"features {s.status} ({FEATURE_SET_VERSION}): {len(s.pending)} hours, "
        f"{s.feature_rows:,} rows for {s.patients:,} patients in {s.seconds:.1f}s; "
        f"labels {s.labels or 'unchanged'}"
    )


if __name__ == "__main__":
    typer.run(main)
