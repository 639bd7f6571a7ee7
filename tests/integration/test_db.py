"""Bulk loads into the real PostgreSQL: binary COPY stores what CSV COPY stores."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta

import psycopg
import pyarrow as pa
import pytest

from stack.db import connect, copy_table
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
