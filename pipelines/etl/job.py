"""Raw lake → validated, cleaned, per-minute vitals (``make etl``).

One run:

1. **Plan** — raw hour partitions that are new or changed since last processed (tracked in
   PostgreSQL ``etl_partitions``), plus neighbouring hours (see :mod:`.plan`).
2. **Validate the raw batch** with the ``raw_vitals`` suite; a broken batch stops here,
   naming the partition and the expectation.
3. **Transform** in one pass over the raw rows, partitioned by patient and sorted by time:
   each task runs :func:`.transform.transform_events` on whole patients — dedupe by
   ``event_id`` (first landed wins), quarantine impossible timestamps, clean with
   :func:`clean_events` (units, impossible values, artifacts — the function the scorer
   uses), resample to one row per patient-minute with :func:`to_minutes` — and writes the
   processed and quarantine rows to Parquet under ``_staging/etl/<run>/`` itself,
   reporting its files and its per-partition counts.
4. **Validate the output** (the staged minute files) with the ``processed_vitals`` suite.
5. **Publish** the staged files into the processed and quarantine zones (each pending
   partition's old files replaced), then load PostgreSQL (``COPY``), replacing each
   partition in one transaction with its reconciliation row:
   ``raw_rows = source_rows + quarantined_rows + duplicates`` (checked, also by the table).

Reruns do nothing; changed partitions are replaced, never appended.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import psycopg
import pyarrow as pa
import typer

from pipelines.etl.plan import Plan, fingerprints, plan
from pipelines.etl.transform import (
    COUNT_FIELDS,
    INPUT_COLUMNS,
    MINUTES_ARROW,
    QUARANTINE_ARROW,
    Bounds,
    transform_events,
)
from pipelines.etl.validation import (
    RAW_COLUMNS,
    SUITE_VERSION,
    EtlValidationError,
    SuiteRunner,
    ValidationOutcome,
    processed_expectations,
    raw_expectations,
)
from stack.catalog import PROCESSED_VITALS, QUARANTINE, RAW_VITALS, hour_of, staging_zone
from stack.db import copy_table, load_partitions, migrate, replace_range_partition, transaction
from stack.lake import Lake
from stack.logs import configure_logging
from stack.metrics import record_stage
from stack.settings import Settings, load_settings
from stack.spark import spark_session
from stack.sparkjob import JobStatus, StagedWriter, by_patient, publish, staged_files

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger("vigil.etl")

STAGING_ZONE = staging_zone("etl")  # tasks' files until the driver publishes them
# What each task reports: one "file" row per file it wrote (zone minutes|quarantine) and
# one "counts" row per pending partition it saw.
STAGED_SCHEMA = "kind string, zone string, partition string, file string, rows long, " + ", ".join(
    f"{c} long" for c in COUNT_FIELDS
)
# A task holds its rows until it has this many (about 300 MB of Arrow), then writes one
# file per partition: at 10M events each task writes once, at its end, so a partition gets
# one file per task. Flushing every 200,000 rows made 1,144 small files at 10M, and
# listing and reading them back cost the output suite 4 s.
HOLD_ROWS = 2_000_000


@dataclass
class PartitionCounts:
    raw_rows: int = 0
    source_rows: int = 0
    quarantined_rows: int = 0
    duplicates: int = 0
    corrected_values: int = 0
    rejected_values: int = 0
    minute_rows: int = 0

    @property
    def reconciles(self) -> bool:
        return self.raw_rows == self.source_rows + self.quarantined_rows + self.duplicates


@dataclass
class EtlSummary:
    run_id: str
    status: str = JobStatus.RUNNING
    pending: list[str] = field(default_factory=list)
    context: list[str] = field(default_factory=list)
    partitions: dict[str, PartitionCounts] = field(default_factory=dict)
    validations: list[dict[str, Any]] = field(default_factory=list)
    report_dir: str = ""
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)

    def total(self, name: str) -> int:
        return sum(int(getattr(c, name)) for c in self.partitions.values())

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["totals"] = {k: self.total(k) for k in asdict(PartitionCounts())}
        return d


# ---------------------------------------------------------------- per-patient functions
def _etl_partition(
    bounds: Bounds, lake_root: str, staging: str
) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """The ``mapInPandas`` body: one task's patients, transformed and written by the task.

    The Python worker writes its minute and quarantine rows to Parquet itself (pyarrow)
    under ``staging``, one file per partition per flush, named by task and attempt, and
    yields only what it wrote and counted. Handing every cleaned row back to the JVM
    between steps (and caching it there) cost more than the cleaning. The driver publishes
    the files of successful tasks; a failed attempt's files are never reported, so never
    published.
    """

    def body(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        writer = StagedWriter(lake_root, staging, HOLD_ROWS)
        counts: dict[str, dict[str, int]] = {}
        for pdf in by_patient(batches):
            out = transform_events(pdf, bounds)
            for q, c in out.counts.items():
                mine = counts.setdefault(q, dict.fromkeys(COUNT_FIELDS, 0))
                for k, v in c.items():
                    mine[k] += v
            for zone, tables in (("minutes", out.minutes), ("quarantine", out.quarantine)):
                for q, t in tables.items():
                    writer.add(zone, q, t)
        writer.flush()
        files = writer.files()
        n_files, n_counts = len(files["file"]), len(counts)
        if not n_files and not n_counts:
            # A task without patients (fewer patients than shuffle partitions) reports
            # nothing: an empty frame fails Spark's conversion to Arrow.
            return
        report = {
            "kind": ["file"] * n_files + ["counts"] * n_counts,
            "zone": [*files["zone"], *[None] * n_counts],
            "partition": [*files["partition"], *counts],
            "file": [*files["file"], *[None] * n_counts],
            "rows": [*files["rows"], *[0] * n_counts],
        }
        for k in COUNT_FIELDS:
            report[k] = [0] * n_files + [c[k] for c in counts.values()]
        yield pd.DataFrame(report)

    return body


# ---------------------------------------------------------------- the job
class EtlJob:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.cfg = settings.etl
        self.lake = Lake(settings.resolve(settings.lake.root))

    def _done(self) -> dict[str, str]:
        with transaction(self.settings) as conn:
            rows = conn.execute("SELECT partition, fingerprint FROM etl_partitions").fetchall()
        return dict(rows)

    def plan(self, only: list[str] | None = None, force: bool = False) -> Plan:
        raw = fingerprints(self.lake.files(RAW_VITALS), RAW_VITALS)
        return plan(raw, self._done(), context_hours=self.cfg.context_hours, only=only, force=force)

    def run(self, *, only: list[str] | None = None, force: bool = False) -> EtlSummary:
        """Process what the plan says; raises :class:`EtlValidationError` on a broken batch."""
        t0 = time.monotonic()
        migrate(self.settings)
        run_id = f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
        summary = EtlSummary(run_id=run_id)
        report_dir = self.settings.resolve(self.cfg.reports_dir) / run_id
        summary.report_dir = str(report_dir)
        self._record_run(summary, started=True)
        try:
            p = self.plan(only, force)
            summary.pending, summary.context = p.pending, p.context
            if p.pending:
                self._process(p, summary, report_dir)
            summary.status = JobStatus.SUCCEEDED if p.pending else JobStatus.NOTHING_TO_DO
        except Exception as exc:
            summary.status = JobStatus.FAILED
            summary.seconds = time.monotonic() - t0
            self._record_run(summary, error=str(exc))
            raise
        summary.seconds = time.monotonic() - t0
        self._record_run(summary)
        log.info(
            "etl done",
            extra={
                "stage": "etl",
                "run_id": run_id,
                "status": summary.status,
                "partitions": len(summary.pending),
                "raw_rows": summary.total("raw_rows"),
                "seconds": round(summary.seconds, 1),
            },
        )
        return summary

    # ------------------------------------------------------------------ steps
    def _process(self, p: Plan, summary: EtlSummary, report_dir: Path) -> None:
        from pyspark.sql.pandas.types import from_arrow_schema

        # Great Expectations takes about 3 s to import and set up its context, in Python;
        # the Spark JVM takes as long to start, in its own process: do both at once.
        with ThreadPoolExecutor(1, "gx-setup") as pool:
            setup = pool.submit(SuiteRunner, report_dir)
            spark = spark_session(self.settings, "vigil-etl")
            runner = setup.result()
        timings = summary.timings
        tick = time.monotonic()
        now = datetime.now(UTC)
        # Not cached: building Spark's cache of every raw row cost more (26 s at 10M events)
        # than reading the Parquet again for the transform pass. The file list is fixed
        # here, and lake files are never rewritten, so every pass reads the same rows.
        # "read_raw_s" is the listing; the reading is in the later steps.
        raw = self._read_raw(spark, p.inputs)
        timings["read_raw_s"] = time.monotonic() - tick
        tick = time.monotonic()

        # 2. raw batch validation (pending partitions only). The landing files each event
        # under the hour of its time, so a partition's rows are its folder's files: read
        # them from the list made above (not a second listing), with no per-row filter.
        raw_files = raw.inputFiles()

        def raw_of(qs: list[str]) -> DataFrame:
            mine = [f for f in raw_files if any(f"/{q}/" in f for q in qs)]
            return spark.read.parquet(*mine).select(*RAW_COLUMNS)

        raw_pending = raw.select(*RAW_COLUMNS) if not p.context else raw_of(p.pending)
        outcome = runner.run("raw_vitals", raw_pending, raw_expectations(self.cfg, now))
        summary.validations.append(self._outcome_dict(outcome))
        timings["validate_raw_s"] = time.monotonic() - tick
        if not outcome.success:
            self._fail(runner, lambda q: raw_of([q]), p.pending, outcome, now)

        staging = f"{STAGING_ZONE}/{summary.run_id}"
        try:
            # 3. one pass: dedupe, time bounds, clean, resample, quarantine, count.
            tick = time.monotonic()
            counts, files = self._transform(raw, p, summary.run_id, now, staging)
            timings["transform_s"] = time.monotonic() - tick
            summary.partitions = counts

            # 4. output validation, on the staged files (nothing is published yet)
            tick = time.monotonic()

            def minutes_of(qs: list[str]) -> DataFrame:
                paths = [self._uri(f) for q in qs for f in files["minutes"].get(q, [])]
                if not paths:
                    return spark.createDataFrame([], from_arrow_schema(MINUTES_ARROW))
                return spark.read.parquet(*paths)

            out = runner.run("processed_vitals", minutes_of(p.pending), processed_expectations())
            summary.validations.append(self._outcome_dict(out))
            timings["validate_processed_s"] = time.monotonic() - tick
            if not out.success:
                self._fail(runner, lambda q: minutes_of([q]), p.pending, out, now, processed=True)

            # 5. outputs
            tick = time.monotonic()
            self._publish(p.pending, files)
            timings["write_lake_s"] = time.monotonic() - tick
        finally:
            self.lake.delete_dir(staging)
        tick = time.monotonic()
        self._write_postgres(p, summary, counts)
        timings["write_postgres_s"] = time.monotonic() - tick

    def _transform(
        self, raw: DataFrame, p: Plan, run_id: str, now: datetime, staging: str
    ) -> tuple[dict[str, PartitionCounts], dict[str, dict[str, list[str]]]]:
        """The one pass over the raw rows, by patient; each task writes its own files under
        ``staging``. Returns the counts per pending partition (reconciled) and the staged
        files per zone and partition."""
        from pyspark.sql import functions as F  # noqa: N812

        bounds = Bounds(
            pending=frozenset(p.pending),
            future=pd.Timestamp(now + timedelta(minutes=self.cfg.max_future_minutes)),
            too_old=pd.Timestamp(now - timedelta(days=self.cfg.max_age_days)),
            run_id=run_id,
        )
        reported = (
            raw.select(*INPUT_COLUMNS, F.xxhash64("event_id").alias("event_key"))
            .repartition(self.settings.spark.shuffle_partitions, "patient_id")
            .sortWithinPartitions("patient_id", "ts", "event_id")
            .mapInPandas(_etl_partition(bounds, self.lake.uri, staging), STAGED_SCHEMA)
            .collect()
        )
        counts = {q: PartitionCounts() for q in p.pending}
        empty: dict[str, dict[str, list[str]]] = {"minutes": {}, "quarantine": {}}
        files = empty | staged_files(r.asDict() for r in reported)
        for r in reported:
            if r.kind == "file":
                continue
            c = counts[r.partition]
            for k in COUNT_FIELDS:
                setattr(c, k, getattr(c, k) + int(r[k]))
        for q, c in counts.items():
            if not c.reconciles:
                raise RuntimeError(f"reconciliation failed for partition {q}: {c}")
        return counts, files

    def _read_raw(self, spark: SparkSession, partitions: list[str]) -> DataFrame:
        return spark.read.parquet(*(self._uri(f"{RAW_VITALS}/{q}") for q in partitions))

    def _publish(self, pending: list[str], files: dict[str, dict[str, list[str]]]) -> None:
        """Replace each pending partition's files in both zones with the staged ones.

        A partition that now has no quarantine rows loses its old ones. PostgreSQL's
        record is updated last, so a crash here means the partition is processed again.
        """
        for kind, zone in (("minutes", PROCESSED_VITALS), ("quarantine", QUARANTINE)):
            publish(self.lake, zone, pending, files[kind])

    def _uri(self, rel: str) -> str:
        """What Spark reads and writes: a local path, or ``s3a://bucket/...``."""
        return f"{self.lake.uri}/{rel}"

    def _write_postgres(
        self, p: Plan, summary: EtlSummary, counts: dict[str, PartitionCounts]
    ) -> None:
        def load(conn: psycopg.Connection[tuple], q: str) -> None:  # type: ignore[type-arg]
            minutes = self.lake.read_table(f"{PROCESSED_VITALS}/{q}")
            quarantine = self.lake.read_table(f"{QUARANTINE}/{q}")
            c = counts[q]
            # Binary COPY: the Arrow types of both zones are those of the migrations' DDL.
            # vitals_minute is partitioned by hour: the hour's rows go into a fresh table,
            # indexed once and swapped in (much faster than a live index, row by row).
            start = hour_of(q)
            if minutes.num_columns == 0:  # no files: the hour is emptied
                minutes = MINUTES_ARROW.empty_table()
            replace_range_partition(
                conn,
                "vitals_minute",
                f"vitals_minute_{start:%Y%m%d_%H}",
                (start, start + timedelta(hours=1)),
                minutes.select(MINUTES_ARROW.names),
                key=("patient_id", "minute"),
                constants={"partition": q},
            )
            conn.execute("DELETE FROM quarantine WHERE partition = %s", (q,))
            if quarantine.num_rows:
                quarantine = quarantine.append_column(
                    "partition", pa.array([q] * quarantine.num_rows)
                )
                copy_table(
                    conn,
                    "quarantine",
                    quarantine.select([*QUARANTINE_ARROW.names, "partition"]),
                    binary=True,
                )
            conn.execute(
                """
                INSERT INTO etl_partitions (partition, fingerprint, run_id, processed_at,
                    raw_rows, source_rows, quarantined_rows, duplicates, corrected_values,
                    rejected_values, minute_rows)
                VALUES (%s, %s, %s, now(), %s, %s, %s, %s, %s, %s, %s)
                ON CONFLICT (partition) DO UPDATE SET
                    fingerprint = EXCLUDED.fingerprint, run_id = EXCLUDED.run_id,
                    processed_at = EXCLUDED.processed_at, raw_rows = EXCLUDED.raw_rows,
                    source_rows = EXCLUDED.source_rows,
                    quarantined_rows = EXCLUDED.quarantined_rows,
                    duplicates = EXCLUDED.duplicates,
                    corrected_values = EXCLUDED.corrected_values,
                    rejected_values = EXCLUDED.rejected_values,
                    minute_rows = EXCLUDED.minute_rows
                """,
                (
                    q, p.fingerprints[q], summary.run_id, c.raw_rows, c.source_rows,
                    c.quarantined_rows, c.duplicates, c.corrected_values,
                    c.rejected_values, c.minute_rows,
                ),
            )  # fmt: skip

        load_partitions(self.settings, p.pending, load)

    # ------------------------------------------------------------------ failure
    def _fail(
        self,
        runner: SuiteRunner,
        part: Callable[[str], DataFrame],
        pending: list[str],
        outcome: ValidationOutcome,
        now: datetime,
        *,
        processed: bool = False,
    ) -> None:
        """Find which partitions break the suite, then stop with a message naming them."""
        culprits = []
        for q in pending:
            df = part(q)
            exps = processed_expectations() if processed else raw_expectations(self.cfg, now)
            res = runner.run(f"{outcome.suite}_{q.replace('/', '_')}", df, exps, detail=True)
            if not res.success:
                culprits.append((q, res.failures))
        if not culprits:  # only the union fails (a share across partitions): name them all
            culprits = [(", ".join(pending), outcome.failures)]
        lines = [f"{outcome.suite} validation failed (suite {SUITE_VERSION}):"]
        for q, failures in culprits:
            lines.append(f"  partition {q}:")
            lines.extend(f"    - {f}" for f in failures)
        lines.append(f"  results: {runner.report_dir}")
        raise EtlValidationError("\n".join(lines))

    @staticmethod
    def _outcome_dict(o: ValidationOutcome) -> dict[str, Any]:
        return {
            "suite": o.suite,
            "suite_version": SUITE_VERSION,
            "success": o.success,
            "failures": o.failures,
            "statistics": o.statistics,
            "json": str(o.json_path),
        }

    # ------------------------------------------------------------------ run record
    def _record_run(
        self, s: EtlSummary, *, started: bool = False, error: str | None = None
    ) -> None:
        with transaction(self.settings) as conn:
            if started:
                conn.execute(
                    "INSERT INTO etl_runs (run_id, started_at, status, report_dir)"
                    " VALUES (%s, now(), 'running', %s)",
                    (s.run_id, s.report_dir),
                )
                return
            ok = {v["suite"]: v["success"] for v in s.validations}
            conn.execute(
                """
                UPDATE etl_runs SET finished_at = now(), status = %s, partitions = %s,
                    raw_rows = %s, source_rows = %s, quarantined_rows = %s, duplicates = %s,
                    minute_rows = %s, raw_validation_success = %s,
                    processed_validation_success = %s, error = %s, seconds = %s
                WHERE run_id = %s
                """,
                (
                    s.status, s.pending, s.total("raw_rows"), s.total("source_rows"),
                    s.total("quarantined_rows"), s.total("duplicates"), s.total("minute_rows"),
                    ok.get("raw_vitals"), ok.get("processed_vitals"), error, s.seconds, s.run_id,
                ),
            )  # fmt: skip


def run_etl(
    settings: Settings, *, only: list[str] | None = None, force: bool = False
) -> EtlSummary:
    """Entry point shared by ``make etl``, the Airflow task and the tests."""
    summary = EtlJob(settings).run(only=only, force=force)
    record_stage(settings, "etl", seconds=summary.seconds)
    return summary


def main(
    partition: list[str] = typer.Option(
        None, "--partition", help="Only these raw partitions (date=YYYY-MM-DD/hour=HH)."
    ),
    force: bool = typer.Option(False, help="Reprocess even unchanged partitions."),
) -> None:
    """Validate, clean and resample new raw partitions into the processed lake and PostgreSQL."""
    settings = load_settings()
    configure_logging(settings.logging)
    for q in partition or []:
        hour_of(q)  # fail early on a malformed name
    try:
        s = run_etl(settings, only=partition or None, force=force)
    except EtlValidationError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    t = {k: s.total(k) for k in asdict(PartitionCounts())}
    typer.echo(
        f"etl {s.status}: {len(s.pending)} partitions in {s.seconds:.1f}s — raw {t['raw_rows']:,} ="
        f" source {t['source_rows']:,} + quarantined {t['quarantined_rows']:,}"
        f" + duplicates {t['duplicates']:,}; {t['minute_rows']:,} patient-minutes;"
        f" reports {s.report_dir}"
    )


if __name__ == "__main__":
    typer.run(main)
