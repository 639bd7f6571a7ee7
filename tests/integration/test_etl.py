"""Spark ETL on real Spark and PostgreSQL: every raw row accounted for, faults where they belong."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from ops.airflowcli import home_metadata_url
from pipelines.etl.datadocs import outside_loads
from pipelines.etl.job import run_etl
from pipelines.landing import VITALS_SCHEMA, Lander
from pipelines.produce import simulate_to_kafka, with_simulator
from pipelines.simulator.engine import WardSimulator
from stack.catalog import PROCESSED_VITALS, QUARANTINE, RAW_VITALS
from stack.db import connect
from stack.lake import Lake
from stack.settings import Settings
from tests.conftest import asset_events, run_dag

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FAULTS = {
    "missing": 0.03, "artifact": 0.01, "impossible": 0.005, "fahrenheit_device": 0.15,
    "duplicate": 0.02, "late": 0.03, "malformed": 0.005,
}  # fmt: skip


def land(s: Settings, **sim: Any) -> tuple[Settings, WardSimulator]:
    s = with_simulator(s, **({"faults": FAULTS, "patients": 30, "hours": 3} | sim))
    _, simulator = simulate_to_kafka(s, record_faults=True)
    Lander(s).run(bounded=True)
    return s, simulator


def q(s: Settings, sql: str) -> list[tuple[Any, ...]]:
    with connect(s) as conn:
        return conn.execute(sql).fetchall()  # type: ignore[arg-type]


def lake(s: Settings) -> Lake:
    return Lake(s.resolve(s.lake.root))


def test_faults_end_where_they_belong_and_rows_reconcile(etl_settings: Settings) -> None:
    s, sim = land(etl_settings)
    summary = run_etl(s)
    assert summary.status == "succeeded"
    raw = lake(s).read_table(RAW_VITALS)

    # Reconciliation, per partition, recorded in PostgreSQL.
    rows = q(s, "SELECT partition, raw_rows, source_rows, quarantined_rows, duplicates"
                " FROM etl_partitions")  # fmt: skip
    raw_by_part = Counter(pc.strftime(raw["ts"], "date=%Y-%m-%d/hour=%H").to_pylist())
    assert {r[0]: r[1] for r in rows} == dict(raw_by_part)
    assert all(r[1] == r[2] + r[3] + r[4] for r in rows)
    assert sum(r[4] for r in rows) == sim.stats.duplicates

    # Table-driven: where each injected fault ended up.
    qrows = q(s, "SELECT event_id, scope, field, reason FROM quarantine")
    reasons: dict[str, set[str]] = {}
    for event_id, _scope, _field, reason in qrows:
        reasons.setdefault(event_id, set()).update(reason.split(","))
    log = sim.fault_log

    def share(kind: str, prefix: str) -> float:
        ids = [e for e, k in log.items() if kind in k and "malformed" not in " ".join(k)]
        hit = [e for e in ids if any(r.startswith(prefix) for r in reasons.get(e, ()))]
        return len(hit) / len(ids)

    assert share("artifact", "artifact:") >= 0.95
    assert share("impossible", "impossible:") >= 0.97
    # °F readings are corrected, not quarantined, and land in °C.
    minutes = lake(s).read_table(PROCESSED_VITALS)
    assert pc.max(minutes["temperature"]).as_py() < 43
    assert pc.min(minutes["temperature"]).as_py() > 33
    corrected = q(s, "SELECT sum(corrected_values) FROM etl_partitions")[0][0]
    fahr_readings = [e for e, k in log.items() if k == ["fahrenheit"]]
    assert corrected >= len(fahr_readings)
    # Late and out-of-order events count in the minute they were measured in.
    late = [e for e, k in log.items() if k == ["late"]]
    assert late
    raw_pd = raw.select(["event_id", "patient_id", "ts"]).to_pandas()
    late_rows = raw_pd[raw_pd.event_id.isin(late)].drop_duplicates("event_id")
    per_minute = {
        (p, m): n for p, m, n in q(s, "SELECT patient_id, minute, n_events FROM vitals_minute")
    }
    for _, r in late_rows.iterrows():
        assert per_minute[(r.patient_id, r.ts.floor("min").to_pydatetime())] >= 1
    # Missing readings stay missing (never invented): observed counts match the raw data.
    hr_obs = q(s, "SELECT sum(n_heart_rate) FROM vitals_minute")[0][0]
    raw_hr = raw.to_pandas().drop_duplicates("event_id")["heart_rate"]
    usable_hr = raw_hr.between(20, 300).sum()
    assert hr_obs <= usable_hr
    assert hr_obs >= usable_hr - sum(1 for k in log.values() if "artifact" in k)
    # One row per patient-minute, in the lake and in PostgreSQL alike.
    pg = q(s, "SELECT count(*), count(DISTINCT (patient_id, minute)) FROM vitals_minute")[0]
    assert pg[0] == pg[1] == minutes.num_rows == summary.total("minute_rows")
    assert summary.total("minute_rows") > 0.8 * 30 * 3 * 60 * 0.85
    # Reports are kept: JSON and GX Data Docs.
    report = Path(summary.report_dir)
    assert (report / "raw_vitals.json").exists()
    assert (report / "processed_vitals.json").exists()
    assert (report / "data_docs" / "index.html").exists()
    # Data Docs that work offline: no page loads anything from elsewhere (GX's own load
    # Bootstrap, jQuery and Vega from CDNs, its logo from S3), and each carries Vigil's
    # stylesheet, which is in the site.
    pages = list((report / "data_docs").rglob("*.html"))
    assert len(pages) >= 3
    for page in pages:
        html = page.read_text()
        assert outside_loads(html) == [], (page.name, outside_loads(html)[:3])
        assert "Content-Security-Policy" in html
        sheet = re.search(r'href="([^"]*vigil-offline\.css)"', html)
        assert sheet is not None
        assert (page.parent / sheet[1]).resolve().is_file()
    run = q(s, "SELECT status, raw_validation_success, processed_validation_success FROM etl_runs")
    assert run == [("succeeded", True, True)]


def _snapshot(s: Settings) -> tuple[Any, ...]:
    m = q(
        s, "SELECT md5(string_agg(t::text, '|' ORDER BY patient_id, minute)) FROM vitals_minute t"
    )
    qq = q(s, "SELECT md5(string_agg(concat_ws(',', event_id, scope, field, raw_value, reason),"
              " '|' ORDER BY event_id, reason)) FROM quarantine")  # fmt: skip
    p = q(s, "SELECT partition, raw_rows, source_rows, quarantined_rows, duplicates, minute_rows"
             " FROM etl_partitions ORDER BY partition")  # fmt: skip
    files = lake(s).read_table(PROCESSED_VITALS).sort_by([("patient_id", "ascending"),
                                                       ("minute", "ascending")])  # fmt: skip
    return m[0][0], qq[0][0], tuple(p), files.num_rows, hash(files.to_pandas().to_csv())


def test_rerun_does_nothing_and_forced_rerun_replaces_identically(etl_settings: Settings) -> None:
    s, _ = land(etl_settings, patients=15, hours=2)
    first = run_etl(s)
    before = _snapshot(s)
    assert run_etl(s).status == "nothing_to_do"
    forced = run_etl(s, force=True)
    assert forced.pending == first.pending
    assert _snapshot(s) == before
    statuses = [r[0] for r in q(s, "SELECT status FROM etl_runs ORDER BY started_at")]
    assert statuses == ["succeeded", "nothing_to_do", "succeeded"]


def test_late_events_reprocess_their_hour_and_replace_it(etl_settings: Settings) -> None:
    s, _ = land(etl_settings, patients=15, hours=3)
    run_etl(s)
    minutes_before = q(s, "SELECT count(*) FROM vitals_minute")[0][0]
    # A second ward lands into the same hours (same clock, other patients): changed files.
    s2, _ = land(s, seed=99, patients=5, hours=1)
    again = run_etl(s2)
    assert again.pending[0].endswith("hour=00")
    rows = q(s, "SELECT count(*), count(DISTINCT (patient_id, minute)),"
                " count(DISTINCT patient_id) FROM vitals_minute")[0]  # fmt: skip
    assert rows[0] == rows[1] > minutes_before
    assert rows[2] == 20
    check = q(s, "SELECT bool_and(raw_rows = source_rows + quarantined_rows + duplicates)"
                 " FROM etl_partitions")  # fmt: skip
    assert check == [(True,)]


def test_a_broken_batch_stops_the_stage_naming_partition_and_expectation(
    etl_settings: Settings, airflow_home: Path, tmp_path: Path
) -> None:
    s, _ = land(etl_settings, patients=10, hours=2)
    # A feed whose heart rate went missing for a whole hour (next day, 03:00).
    good = lake(s).read_table(RAW_VITALS)
    broken = good.slice(0, 500)
    shifted = pc.add(broken["ts"], pa.scalar(86_400_000_000 + 3 * 3_600_000_000, pa.duration("us")))
    broken = broken.set_column(broken.schema.get_field_index("ts"), "ts",
                               shifted.cast(VITALS_SCHEMA.field("ts").type))  # fmt: skip
    broken = broken.set_column(
        broken.schema.get_field_index("heart_rate"), "heart_rate", pa.nulls(500, pa.float64())
    )
    lake(s).write_parquet(broken, f"{RAW_VITALS}/date=2026-01-06/hour=03/part-broken.parquet")
    # Through Airflow (the stage itself, once: Spark and GX start-up are most of the cost):
    # the ETL task fails at once, no retry, with the validation's message naming the
    # partition and the expectation, and the processed Asset is not updated, so features
    # do not run on a broken batch. AirflowFailException is what the DAG raises for an
    # EtlValidationError, and only for it.
    processed = "vigil://lake/processed/vitals_minute"
    # The session's Airflow home is shared, its metadata on PostgreSQL as by default.
    assert home_metadata_url(airflow_home).startswith("postgresql+psycopg://")
    before = asset_events(airflow_home, processed)
    run = run_dag(airflow_home, s, "vigil_etl", tmp_path)
    log = run.stdout + run.stderr
    assert "AirflowFailException: raw_vitals validation failed" in log, log[-3000:]
    message = log[log.rindex("AirflowFailException:") :]
    message = message[: message.index("results:")]
    assert "partition date=2026-01-06/hour=03" in message
    assert "expect_column_values_to_not_be_null(column=heart_rate" in message
    assert "date=2026-01-05/hour=00" not in message  # the good hour is not blamed
    assert "state=failed" in log
    # Quiet task logs at their own levels: the failure is the only error (Airflow files
    # every stderr line of a task under ERROR, so Vigil logs through the task runner's
    # handlers), and the libraries' deprecation warnings stay out of the task's log.
    errors = [line for line in log.splitlines() if "[error" in line]
    assert len(errors) == 1, errors
    assert "Task failed with exception" in errors[0]
    task_log = log[log.index("Task started") :]
    assert "[py.warnings]" not in task_log
    failed = q(s, "SELECT status, error FROM etl_runs")
    assert failed[0][0] == "failed"
    assert "date=2026-01-06/hour=03" in failed[0][1]
    # Nothing was written for any partition of the failed run.
    assert q(s, "SELECT count(*) FROM etl_partitions") == [(0,)]
    assert lake(s).files(QUARANTINE) == []
    assert asset_events(airflow_home, processed) == before


def test_a_failed_output_suite_publishes_nothing(
    etl_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import great_expectations as gx

    from pipelines.etl import job
    from pipelines.etl.validation import EtlValidationError

    # Fewer patients than shuffle partitions: some tasks get no rows (and report none).
    s, _ = land(etl_settings, patients=3, hours=2)
    assert s.spark.shuffle_partitions > 3

    def impossible() -> list[Any]:  # no minute may hold an event: every hour breaks it
        return [gx.expectations.ExpectColumnValuesToBeBetween(column="n_events", max_value=0)]

    monkeypatch.setattr(job, "processed_expectations", impossible)
    with pytest.raises(EtlValidationError) as err:
        run_etl(s)
    message = str(err.value)
    assert message.startswith("processed_vitals validation failed")
    assert "partition date=2026-01-05/hour=00" in message
    assert "expect_column_values_to_be_between(column=n_events" in message
    # The tasks' files were written and validated, but never published or loaded.
    assert lake(s).files(PROCESSED_VITALS) == []
    assert lake(s).files(QUARANTINE) == []
    assert lake(s).files("_staging", suffix="") == []
    assert q(s, "SELECT count(*) FROM etl_partitions") == [(0,)]
    assert q(s, "SELECT count(*) FROM vitals_minute") == [(0,)]
    assert q(s, "SELECT status FROM etl_runs") == [("failed",)]
