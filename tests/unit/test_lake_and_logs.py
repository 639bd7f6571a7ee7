from __future__ import annotations

import io
import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest

from stack.catalog import by_hour as _by_hour
from stack.lake import Lake
from stack.logs import configure_logging
from stack.settings import LoggingSettings


def test_atomic_parquet_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    ts = pa.array([datetime(2026, 1, 5, 3, 4, 5, 123456, tzinfo=UTC)], pa.timestamp("ns", "UTC"))
    lake.write_parquet(pa.table({"ts": ts, "x": [1]}), "raw/a/date=2026-01-05/part-1.parquet")
    files = [p.name for p in (tmp_path / "lake").rglob("*") if p.is_file()]
    assert files == ["part-1.parquet"]
    t = lake.read_table("raw/a")
    # Spark refuses nanosecond Parquet timestamps: the lake writes microseconds.
    assert t.schema.field("ts").type == pa.timestamp("us", tz="UTC")
    assert lake.read_table("raw/a/date=2026-01-05/part-1.parquet").num_rows == 1
    assert lake.files("raw/missing") == []


def test_json_round_trip_and_delete(tmp_path: Path) -> None:
    lake = Lake(str(tmp_path))
    lake.write_json({"a": 1}, "_x/j.json")
    assert lake.read_json("_x/j.json") == {"a": 1}
    lake.delete("_x/j.json")
    lake.delete("_x/j.json")  # deleting what is gone is fine
    assert not lake.exists("_x/j.json")


def test_s3a_roots_are_understood_and_others_refused() -> None:
    with pytest.raises(ValueError, match="unsupported lake root"):
        Lake("hdfs://nn/vigil")


def test_rows_are_split_by_event_hour() -> None:
    t0 = datetime(2026, 1, 5, 23, 59, 59, tzinfo=UTC)
    ts = [t0, t0 + timedelta(seconds=2), t0 - timedelta(hours=5)]
    parts = _by_hour(
        pa.table({"ts": pa.array(ts, pa.timestamp("us", "UTC")), "i": [0, 1, 2]}), "ts"
    )
    assert {k: v["i"].to_pylist() for k, v in parts.items()} == {
        "date=2026-01-05/hour=23": [0],
        "date=2026-01-06/hour=00": [1],
        "date=2026-01-05/hour=18": [2],
    }


def test_json_logs_are_one_object_per_line_with_extras() -> None:
    buf = io.StringIO()
    configure_logging(LoggingSettings(level="INFO", format="json"), stream=buf)
    logging.getLogger("vigil.test").info("flushed", extra={"stage": "landing", "records": 3})
    logging.getLogger("vigil.test").debug("hidden")
    lines = buf.getvalue().splitlines()
    assert len(lines) == 1
    rec = json.loads(lines[0])
    assert rec["event"] == "flushed"
    assert rec["stage"] == "landing"
    assert rec["records"] == 3
    assert rec["level"] == "info"


def test_inside_an_airflow_task_the_runners_handler_stays_redacts_and_keeps_levels() -> None:
    """Airflow 3 files every stderr line of a task under ERROR: inside a task Vigil logs
    through the task runner's handler (levels kept), with inputs redacted, and the
    libraries' deprecation warnings are not written to the task's log."""
    import warnings

    from stack.logs import configure_task_logging

    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    seen: list[logging.LogRecord] = []

    class Runner(logging.Handler):  # stands in for the task runner's structured handler
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    runner = Runner()
    root.handlers[:] = [runner]
    try:
        configure_task_logging(LoggingSettings(level="INFO", format="text"))
        configure_task_logging(LoggingSettings(level="INFO", format="text"))  # idempotent
        assert root.handlers == [runner]
        assert sum(type(f).__name__ == "RedactInputs" for f in runner.filters) == 1
        logging.getLogger("vigil.etl").info("row refused: input_value={'hr': 88}")
        assert [r.levelno for r in seen] == [logging.INFO]
        assert "88" not in runner.format(seen[0])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")  # everything shows, unless filtered again
            configure_task_logging(LoggingSettings(level="INFO", format="text"))
            warnings.warn("old API", DeprecationWarning, stacklevel=1)
            warnings.warn("a real problem", RuntimeWarning, stacklevel=1)
        assert [str(w.message) for w in caught] == ["a real problem"]
    finally:
        root.handlers[:], root.level = saved
        warnings.resetwarnings()  # pytest sets its own again for the next test
