"""Bulk loads into the real PostgreSQL: binary COPY stores what CSV COPY stores."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta

import psycopg
import pyarrow as pa
import pytest

from stack.db import (
    MIGRATIONS,
    connect,
    copy_table,
    drop_database,
    load_partitions,
    recreate_database,
    replace_range_partition,
    transaction,
)
from stack.settings import Settings

pytestmark = pytest.mark.integration

DDL = """
    f8 double precision, f4 real, i8 bigint, i4 integer, i2 smallint, b boolean,
    tz timestamptz, ts timestamp, d date, s text, v varchar(40)
"""


def _table(n: int) -> pa.Table:
    t0 = datetime(2026, 11, 29, 5, 0, tzinfo=UTC)

    def maybe(values: list[object]) -> list[object]:
        return [None if i % 7 == 3 else v for i, v in enumerate(values)]

    return pa.table(
        {
            "f8": pa.array(maybe([i / 3 - 50 if i % 11 else float("nan") for i in range(n)])),
            "f4": pa.array(maybe([i * 0.25 for i in range(n)]), type=pa.float32()),
            "i8": pa.array(maybe([i * 10**12 - 7 for i in range(n)]), type=pa.int64()),
            "i4": pa.array(maybe([-i * 1000 for i in range(n)]), type=pa.int32()),
            "i2": pa.array(maybe([i % 300 - 150 for i in range(n)]), type=pa.int16()),
            "b": pa.array(maybe([i % 2 == 0 for i in range(n)])),
            "tz": pa.array(
                maybe([t0 + timedelta(seconds=i, microseconds=i) for i in range(n)]),
                type=pa.timestamp("us", "UTC"),
            ),
            "ts": pa.array(
                maybe([datetime(1999, 12, 31) + timedelta(minutes=i) for i in range(n)]),
                type=pa.timestamp("us"),
            ),
            "d": pa.array(maybe([date(1970, 1, 1) + timedelta(days=97 * i) for i in range(n)])),
            "s": pa.array(maybe([('é,"q"\n' * (i % 4)) + str(i) for i in range(n)])),
            "v": pa.array(maybe(["P-" + "x" * (i % 9) for i in range(n)])),
        }
    )


def test_binary_copy_stores_exactly_what_csv_copy_stores(stack_settings: Settings) -> None:
    names = {mode: f"copy_{mode}_{uuid.uuid4().hex[:8]}" for mode in ("csv", "bin")}
    data = _table(5_000)
    rows = {}
    with connect(stack_settings) as conn:
        for mode, name in names.items():
            conn.execute(f"CREATE TABLE {name} (k serial, {DDL})")
            assert copy_table(conn, name, data, binary=mode == "bin") == data.num_rows
            cols = ", ".join(data.column_names)
            rows[mode] = conn.execute(f"SELECT {cols} FROM {name} ORDER BY k").fetchall()
            conn.execute(f"DROP TABLE {name}")
    assert len(rows["bin"]) == data.num_rows
    # NaN != NaN: compare text forms, which PostgreSQL prints the same for equal values.
    assert [tuple(map(repr, r)) for r in rows["bin"]] == [tuple(map(repr, r)) for r in rows["csv"]]
    assert rows["bin"][1][0] == pytest.approx(1 / 3 - 50)
    assert rows["bin"][3][0] is None


def test_binary_copy_into_a_mismatched_column_fails_naming_it(stack_settings: Settings) -> None:
    name = f"copy_bad_{uuid.uuid4().hex[:8]}"
    with connect(stack_settings) as conn:
        conn.execute(f"CREATE TABLE {name} (x integer)")
        conn.commit()
        with pytest.raises(psycopg.errors.InvalidBinaryRepresentation, match="column x"):
            copy_table(conn, name, pa.table({"x": pa.array([1.5])}), binary=True)
        conn.rollback()
        conn.execute(f"DROP TABLE {name}")


# ------------------------------------------------------------------ range partitions
PART_DDL = """
    CREATE TABLE {name} (
        k text NOT NULL, t timestamptz NOT NULL, v double precision,
        c char(1) CHECK (c IN ('A', 'B')), PRIMARY KEY (k, t)
    ) PARTITION BY RANGE (t)
"""
H0 = datetime(2026, 1, 5, 7, tzinfo=UTC)


def _hour_rows(start: datetime, keys: list[str], c: str = "A") -> pa.Table:
    return pa.table(
        {
            "k": keys,
            "t": pa.array(
                [start + timedelta(minutes=i) for i in range(len(keys))], pa.timestamp("us", "UTC")
            ),
            "v": [float(i) for i in range(len(keys))],
            "c": [c] * len(keys),
        }
    )


def _partitioned_table(s: Settings) -> str:
    name = f"parts_{uuid.uuid4().hex[:8]}"
    with transaction(s) as conn:
        conn.execute(PART_DDL.format(name=name))
    return name


def _replace(s: Settings, name: str, hour: int, data: pa.Table) -> None:
    start = H0 + timedelta(hours=hour)
    with transaction(s) as conn:
        replace_range_partition(
            conn, name, f"{name}_{hour:02d}", (start, start + timedelta(hours=1)), data, ("k", "t")
        )


def test_a_range_partition_is_replaced_whole_and_keeps_one_index(
    etl_settings: Settings,
) -> None:
    s, name = etl_settings, _partitioned_table(etl_settings)
    _replace(s, name, 0, _hour_rows(H0, ["a", "b", "c"]))
    _replace(s, name, 1, _hour_rows(H0 + timedelta(hours=1), ["a", "b"]))
    _replace(s, name, 0, _hour_rows(H0, ["z"]))
    with connect(s) as conn:
        rows = conn.execute(f"SELECT k, t FROM {name} ORDER BY t").fetchall()
        children = conn.execute(
            "SELECT inhrelid::regclass::text FROM pg_inherits"
            " WHERE inhparent = %s::regclass ORDER BY 1",
            (name,),
        ).fetchall()
        # The loaded table's own primary key became the parent index's partition: attaching
        # built no second index.
        indexes = conn.execute(
            "SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = %s::regclass",
            (f"{name}_00",),
        ).fetchall()
    assert [r[0] for r in rows] == ["z", "a", "b"]
    assert children == [(f"{name}_00",), (f"{name}_01",)]
    assert indexes == [(f"{name}_00_pkey",)]


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (pa.concat_tables([_hour_rows(H0, ["a"])] * 2), psycopg.errors.UniqueViolation),
        (_hour_rows(H0 + timedelta(minutes=59), ["a", "b"]), psycopg.errors.CheckViolation),
        (_hour_rows(H0, ["a"], c="Z"), psycopg.errors.CheckViolation),  # the parent's CHECK
    ],
)
def test_a_failed_replacement_leaves_the_partition_as_it_was(
    etl_settings: Settings, data: pa.Table, error: type[Exception]
) -> None:
    s, name = etl_settings, _partitioned_table(etl_settings)
    _replace(s, name, 0, _hour_rows(H0, ["old"]))
    with pytest.raises(error):
        _replace(s, name, 0, data)
    with connect(s) as conn:
        assert conn.execute(f"SELECT k FROM {name}").fetchall() == [("old",)]


def test_parallel_replacements_of_different_partitions_do_not_deadlock(
    etl_settings: Settings,
) -> None:
    s, name = etl_settings, _partitioned_table(etl_settings)
    hours = [f"{h:02d}" for h in range(12)]
    for round_ in range(2):  # the second round replaces every partition
        keys = [f"r{round_}-{i}" for i in range(50)]

        def load(conn: psycopg.Connection[tuple], h: str, keys: list[str] = keys) -> None:  # type: ignore[type-arg]
            start = H0 + timedelta(hours=int(h))
            replace_range_partition(
                conn, name, f"{name}_{h}", (start, start + timedelta(hours=1)),
                _hour_rows(start, keys), ("k", "t"),
            )  # fmt: skip

        load_partitions(s.model_copy(update={"postgres": s.postgres.model_copy(
            update={"load_connections": 3})}), hours, load)  # fmt: skip
        with connect(s) as conn:
            got = conn.execute(f"SELECT count(*), min(k), max(k) FROM {name}").fetchone()
        assert got == (12 * 50, f"r{round_}-0", f"r{round_}-9")


def test_the_partitioning_migration_keeps_every_minute_row(etl_settings: Settings) -> None:
    schema = f"mig_{uuid.uuid4().hex[:8]}"
    first, partitioning = MIGRATIONS[0][2], next(m[2] for m in MIGRATIONS if m[0] == 5)
    cols = ", ".join(f"n_{v}" for v in (
        "heart_rate", "systolic_bp", "diastolic_bp", "spo2", "resp_rate", "temperature",
        "consciousness", "events"))  # fmt: skip
    with transaction(etl_settings) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"SET LOCAL search_path TO {schema}")
        conn.execute(first)
        conn.execute(
            f"INSERT INTO vitals_minute (patient_id, minute, heart_rate, consciousness, {cols},"
            " partition) SELECT 'p' || (i % 3), timestamptz '2026-01-05 06:30Z'"
            " + i * interval '1 minute', 60 + i, 'A', 1, 1, 1, 1, 1, 1, 1, 1, 'x'"
            " FROM generate_series(0, 149) i"
        )
        before = conn.execute(
            "SELECT md5(string_agg(t::text, '|' ORDER BY patient_id, minute)) FROM vitals_minute t"
        ).fetchone()
        conn.execute(partitioning)
        after = conn.execute(
            "SELECT md5(string_agg(t::text, '|' ORDER BY patient_id, minute)) FROM vitals_minute t"
        ).fetchone()
        children = conn.execute(
            "SELECT inhrelid::regclass::text FROM pg_inherits"
            " WHERE inhparent = 'vitals_minute'::regclass ORDER BY 1"
        ).fetchall()
        constraints = conn.execute(
            "SELECT contype, pg_get_constraintdef(oid) FROM pg_constraint"
            " WHERE conrelid = 'vitals_minute'::regclass AND contype IN ('c', 'p') ORDER BY 1"
        ).fetchall()
        conn.execute(f"DROP SCHEMA {schema} CASCADE")
    assert constraints[1] == ("p", "PRIMARY KEY (patient_id, minute)")
    assert constraints[0][0] == "c"
    assert "consciousness" in constraints[0][1]
    assert after == before
    # 06:30 + 150 minutes: hours 06, 07 and 08.
    assert [c[0].rsplit(".", 1)[-1] for c in children] == [
        "vitals_minute_20260105_06", "vitals_minute_20260105_07", "vitals_minute_20260105_08",
    ]  # fmt: skip


def test_a_constant_column_is_filled_by_the_new_tables_default(etl_settings: Settings) -> None:
    s, name = etl_settings, _partitioned_table(etl_settings)
    rows = _hour_rows(H0, ["a", "b"]).drop_columns(["c"])
    with transaction(s) as conn:
        replace_range_partition(
            conn, name, f"{name}_00", (H0, H0 + timedelta(hours=1)), rows, ("k", "t"),
            constants={"c": "B"},
        )  # fmt: skip
    with connect(s) as conn:
        assert conn.execute(f"SELECT k, c FROM {name} ORDER BY k").fetchall() == [
            ("a", "B"), ("b", "B"),
        ]  # fmt: skip
    for constants, data in (({"c": "B"}, _hour_rows(H0, ["a"])), ({"nope": 1}, rows)):
        with pytest.raises(ValueError, match="constants"), transaction(s) as conn:
            replace_range_partition(
                conn, name, f"{name}_00", (H0, H0 + timedelta(hours=1)), data, ("k", "t"),
                constants=constants,
            )  # fmt: skip


def test_dropping_a_database_waits_out_a_session_the_role_may_not_end(
    stack_settings: Settings,
) -> None:
    """The role Vigil runs as may not end a superuser's backend (an autovacuum worker
    is one): ``WITH (FORCE)`` fails, so the drop waits for it, and says so if it stays."""
    import threading

    from stack.localstack import _embedded_database_url, endpoints

    server = endpoints(stack_settings).database_url
    name = f"d_{uuid.uuid4().hex[:8]}"
    recreate_database(server, name)
    other = _embedded_database_url(stack_settings, "superuser", name)
    with psycopg.connect(other) as held:
        with pytest.raises(RuntimeError, match=f"{name}.*still has sessions"):
            drop_database(server, name, wait_s=1.0)
        threading.Timer(1.0, held.close).start()
        drop_database(server, name, wait_s=20.0)  # succeeds once the session has gone
    with psycopg.connect(server) as conn:
        left = conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (name,))
        assert left.fetchone() == (0,)
