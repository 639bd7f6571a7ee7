"""The numpy binary-COPY encoder against a value-by-value reference written from the manual."""

from __future__ import annotations

import struct
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stack.pgbinary import SIGNATURE, TRAILER, binary_copy_blocks

PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


def _value(t: pa.DataType, v: Any) -> bytes:
    """One field, the slow obvious way (PostgreSQL manual, COPY, binary format)."""
    if v is None:
        return struct.pack(">i", -1)
    if pa.types.is_float64(t):
        body = struct.pack(">d", v)
    elif pa.types.is_float32(t):
        body = struct.pack(">f", v)
    elif pa.types.is_integer(t):
        body = struct.pack({16: ">h", 32: ">i", 64: ">q"}[t.bit_width], v)
    elif pa.types.is_boolean(t):
        body = b"\x01" if v else b"\x00"
    elif pa.types.is_timestamp(t):
        v = v if v.tzinfo else v.replace(tzinfo=UTC)
        delta = v - PG_EPOCH
        body = struct.pack(">q", (delta.days * 86_400 + delta.seconds) * 10**6 + delta.microseconds)
    elif pa.types.is_date32(t):
        body = struct.pack(">i", (v - PG_EPOCH.date()).days)
    else:
        body = v.encode()
    return struct.pack(">i", len(body)) + body


def reference(table: pa.Table) -> bytes:
    out = [SIGNATURE]
    types = [f.type for f in table.schema]
    for row in table.to_pylist():
        out.append(struct.pack(">h", len(types)))
        out.extend(_value(t, v) for t, v in zip(types, row.values(), strict=True))
    out.append(TRAILER)
    return b"".join(out)


TYPES: dict[str, tuple[pa.DataType, st.SearchStrategy[Any]]] = {
    "f8": (pa.float64(), st.floats(allow_nan=True, allow_infinity=True)),
    "f4": (pa.float32(), st.floats(width=32)),
    "i8": (pa.int64(), st.integers(-(2**63), 2**63 - 1)),
    "i4": (pa.int32(), st.integers(-(2**31), 2**31 - 1)),
    "i2": (pa.int16(), st.integers(-(2**15), 2**15 - 1)),
    "b": (pa.bool_(), st.booleans()),
    "tz": (
        pa.timestamp("us", "UTC"),
        st.datetimes(datetime(1900, 1, 1), datetime(2200, 1, 1), timezones=st.just(UTC)),
    ),
    "ts": (pa.timestamp("us"), st.datetimes(datetime(1900, 1, 1), datetime(2200, 1, 1))),
    "d": (pa.date32(), st.dates(date(1900, 1, 1), date(2200, 1, 1))),
    "s": (pa.string(), st.text(max_size=12)),
    "ls": (pa.large_string(), st.text(max_size=3)),
}


@st.composite
def tables(draw: st.DrawFn) -> pa.Table:
    names = draw(st.lists(st.sampled_from(sorted(TYPES)), min_size=1, max_size=6))
    rows = draw(st.integers(0, 30))
    cols = {}
    for i, name in enumerate(names):
        t, values = TYPES[name]
        cols[f"c{i}_{name}"] = pa.array(
            draw(st.lists(st.none() | values, min_size=rows, max_size=rows)), type=t
        )
    return pa.table(cols)


@settings(max_examples=150, deadline=None)
@given(tables(), st.integers(1, 7))
def test_blocks_equal_the_reference_encoding(table: pa.Table, cut: int) -> None:
    whole = b"".join(binary_copy_blocks(table))
    assert whole == reference(table)
    # Chunked (tiny chunks: one or a few rows each) and sliced input give the same bytes.
    assert b"".join(binary_copy_blocks(table, chunk_bytes=cut)) == whole
    if table.num_rows > cut:
        tail = table.slice(cut)
        assert b"".join(binary_copy_blocks(tail)) == reference(tail)


def test_nanosecond_times_round_to_microseconds_and_dictionaries_decode() -> None:
    base = datetime(2026, 1, 1, tzinfo=UTC)
    start = int(base.timestamp()) * 10**9
    ns = pa.array([start, start + 1_499, start + 1_500, None], type=pa.int64())
    table = pa.table({"t": ns.cast(pa.timestamp("ns", "UTC"))})
    micros = [base, base + timedelta(microseconds=1), base + timedelta(microseconds=2), None]
    expected = pa.table({"t": pa.array(micros, type=pa.timestamp("us", "UTC"))})
    assert b"".join(binary_copy_blocks(table)) == reference(expected)
    cat = pa.table({"s": pa.array(["a", "bb", None, "a"]).dictionary_encode()})
    plain = pa.table({"s": pa.array(["a", "bb", None, "a"])})
    assert b"".join(binary_copy_blocks(cat)) == reference(plain)


def test_an_unmapped_type_names_the_column() -> None:
    table = pa.table({"ok": [1.0], "bad": pa.array([b"\x00"], type=pa.binary())})
    with pytest.raises(TypeError, match=r"'bad'.*binary"):
        b"".join(binary_copy_blocks(table))
