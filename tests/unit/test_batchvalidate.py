"""The columnar validator accepts exactly what the pydantic contract accepts, row for row."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from stack.batchvalidate import BatchValidator, arrow_schema
from stack.contracts import (
    KAFKA_TS_RANGE_MS,
    AdmissionEvent,
    EventTimeBounds,
    OutcomeEvent,
    VitalsEvent,
    sane_kafka_ts_ms,
    violation_reason,
)
from tests.unit.test_contracts import EVENT

BASE: dict[str, Any] = {**EVENT, "systolic_bp": 120.0}

ODD_VALUES: list[Any] = [None, "x", "", 1, 0, -3.5, 1.0, True, [], {}, [1], {"a": 1}]
FIELD_SPECIFIC: dict[str, list[Any]] = {
    "event_id": [
        "0B8D3C1E-3F4A-4C2B-9A7E-1D2C3B4A5F60",
        "0b8d3c1e3f4a4c2b9a7e1d2c3b4a5f60",
        "urn:uuid:0b8d3c1e-3f4a-4c2b-9a7e-1d2c3b4a5f60",
        "0b8d3c1e-3f4a-4c2b-9a7e-1d2c3b4a5f6",
    ],
    "ts": [
        "2026-01-05T10:00:00Z", "2026-01-05T12:00:00+02:00", "2026-01-05T10:00:00.123456Z",
        "2026-01-05T10:00:00.1234567Z", "2026-01-05T10:00:00", "2026-01-05 10:00:00Z",
        "2026-13-05T10:00:00Z", "2026-01-05T10:00:00z", "2026-01-05", 1767607200,
        "0000-01-05T10:00:00Z", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z",
        "2026-02-29T10:00:00Z", "2028-02-29T10:00:00Z", "2026-04-31T10:00:00Z",
        "2026-01-05T24:00:00Z", "2026-01-05T23:60:00Z", "2026-01-05T23:59:60Z",
        "2026-01-05T10:00:00+23:59", "2026-01-05T10:00:00+24:00", "2026-01-05T10:00:00-05:60",
    ],
    "schema_version": [2, "1", 1.0],
    "consciousness": ["a", "X", "AV"],
    "heart_rate": [1e308, -0.0, 12345678901234567890, 1e6, -1e6, 1000000.5, -1e6 - 1],
}  # fmt: skip
# Hostile but parseable: the contract's id rules and its time range.
FIELD_SPECIFIC["ts"] += [
    "1969-12-31T23:59:59Z", "1970-01-01T00:00:00Z", "1970-01-01T00:30:00+01:00",
    "2199-12-31T23:59:59.999999Z", "2200-01-01T00:00:00Z", "2199-12-31T23:00:00-01:00",
]  # fmt: skip
HOSTILE_IDS: list[Any] = [
    "pt\u0000x", "pt\n1", "pt\t1", " pt-1", "pt 1", "pt/1", "../etc", "a" * 64, "a" * 65,
    "-pt", ".pt", "pt-\u00e9", "pt-\u202e1", "pt:1.a_b-c", "PT-01", "0",
]  # fmt: skip
FIELD_SPECIFIC["patient_id"] = HOSTILE_IDS
FIELD_SPECIFIC["device_id"] = HOSTILE_IDS


ADMISSION: dict[str, Any] = {
    "admission_id": "9e8d3c1e-3f4a-4c2b-9a7e-1d2c3b4a5f60",
    "schema_version": 1,
    "patient_id": "pt-1",
    "ts": "2026-01-05T08:00:00.000Z",
    "age": 71,
    "sex": "F",
    "spo2_scale": 2,
}
ADMISSION_SPECIFIC: dict[str, list[Any]] = {
    "age": [120, 121, -1, 71.0, 71.5, "71", 2**40],
    "sex": ["f", "X", "female"],
    "spo2_scale": [3, "2", 2.0, 0],
}
CASES = {
    "vitals": (VitalsEvent, BASE, FIELD_SPECIFIC, "event_id"),
    "admissions": (AdmissionEvent, ADMISSION, ADMISSION_SPECIFIC, "admission_id"),
}


def _variants(
    base: dict[str, Any] = BASE, specific: dict[str, list[Any]] = FIELD_SPECIFIC
) -> list[bytes | None]:
    out: list[bytes | None] = [orjson.dumps(base)]
    for field in base:
        without = {k: v for k, v in base.items() if k != field}
        out.append(orjson.dumps(without))
        for value in ODD_VALUES + specific.get(field, []):
            out.append(orjson.dumps({**base, field: value}))
    good = orjson.dumps(base)
    out += [
        None,
        b"",
        b"   ",
        good[:40],
        good + good,  # two objects on one line
        json.dumps(base, indent=2).encode(),  # pretty-printed: spans lines
        b"\xef\xbb\xbf" + good,  # UTF-8 byte-order mark
        b"  " + good,
        good.replace(b"pt-1", b"pt-\xff"),  # not UTF-8
        good[:-1] + b',"extra":1}',
        good[:-1] + b',"heart_rate":90}',  # duplicate key
        good.replace(b'"heart_rate":88', b'"heart_rate":NaN').replace(b'"age":71', b'"age":NaN'),
        good.replace(b'"heart_rate":88', b'"heart_rate":Infinity'),
        good.replace(b"pt-1", b"pt-\\u00e9"),
        b"[1,2]",
        b"null",
        b"42",
    ]
    return out


def _pydantic(
    raw: bytes | None, model: type[Any] = VitalsEvent, id_field: str = "event_id"
) -> tuple[str, Any]:
    if not raw:
        return "reject", "empty_message"
    try:
        ev = model.model_validate_json(raw)
    except ValidationError as exc:
        return "reject", violation_reason(exc)[0]
    row = dict(ev.__dict__)
    row[id_field] = str(row[id_field])
    row["ts"] = row["ts"].astimezone(UTC)
    return "accept", row


@pytest.mark.parametrize("contract", sorted(CASES))
def test_every_variant_gets_the_pydantic_verdict(contract: str) -> None:
    model, base, specific, id_field = CASES[contract]
    variants = _variants(base, specific)
    # Interleave good messages so that bad ones sit inside batches, as in production.
    good = orjson.dumps({**base, id_field: str(uuid.uuid4())})
    batch: list[bytes | None] = []
    for v in variants:
        batch += [good, v, good]
    result = BatchValidator(model).validate(batch)
    rows = {r.pop("_index"): r for r in result.table.to_pylist()}
    rejects = {i: reason for i, reason, _detail in result.rejects}
    assert set(rows).isdisjoint(rejects)
    assert set(rows) | set(rejects) == set(range(len(batch)))
    mismatches = []
    for i, raw in enumerate(batch):
        verdict, expected = _pydantic(raw, model, id_field)
        if verdict == "accept":
            got = rows.get(i)
            if got is None or {k: got[k] for k in expected} != expected:
                mismatches.append((raw, "accepted by pydantic", got, expected))
        elif rejects.get(i) != expected:
            mismatches.append((raw, "rejected by pydantic", rejects.get(i), expected))
    assert not mismatches, mismatches[:5]
    assert result.table.column("_index").to_pylist() == sorted(rows)
    # The interleaved good messages took the fast path; only the variants needed pydantic.
    assert result.slow_path <= len(variants)


def test_arrow_schema_is_derived_from_the_model() -> None:
    schema = arrow_schema(VitalsEvent)
    assert schema.names == list(VitalsEvent.model_fields)
    assert str(schema.field("ts").type) == "timestamp[us, tz=UTC]"
    assert arrow_schema(OutcomeEvent).names == list(OutcomeEvent.model_fields)


def test_a_batch_of_only_bad_messages_and_an_empty_batch() -> None:
    v = BatchValidator(VitalsEvent)
    empty = v.validate([])
    assert empty.table.num_rows == 0
    assert empty.rejects == []
    bad = v.validate([b"{", b"nope", None])
    assert [r[1] for r in bad.rejects] == ["bad_json", "bad_json", "empty_message"]


@pytest.mark.parametrize("size", [1, 1023, 1024, 1025, 5000])
def test_slice_boundaries_keep_every_row(size: int) -> None:
    msgs = [orjson.dumps({**BASE, "event_id": str(uuid.uuid4())}) for _ in range(size)]
    msgs[size // 2] = b'{"truncated'
    r = BatchValidator(VitalsEvent).validate(msgs)
    assert r.table.num_rows == size - 1
    assert [i for i, _r, _d in r.rejects] == [size // 2]
    assert r.slow_path == 1


@pytest.mark.parametrize(
    "ts", ["2026-02-30T10:00:00Z", "2026-13-05T10:00:00Z", "0000-01-05T10:00:00Z"]
)
def test_an_impossible_time_costs_only_its_own_row(ts: str) -> None:
    msgs = [orjson.dumps({**BASE, "event_id": str(uuid.uuid4())}) for _ in range(3000)]
    msgs[1234] = orjson.dumps({**BASE, "ts": ts})
    r = BatchValidator(VitalsEvent).validate(msgs)
    assert [(i, reason) for i, reason, _d in r.rejects] == [(1234, "invalid_value")]
    assert r.slow_path == 1, "the other rows should have stayed on the fast path"
    assert r.table.num_rows == 2999


def test_a_message_cut_short_skips_the_arrow_read() -> None:
    good = orjson.dumps({**BASE, "event_id": str(uuid.uuid4())})
    v = BatchValidator(VitalsEvent)
    reads: list[int] = []
    read = v._read_lines

    def counting(values: Sequence[bytes | None], idx: list[int]) -> Any:
        reads.append(len(idx))
        return read(values, idx)

    v._read_lines = counting  # type: ignore[method-assign]
    r = v.validate([good] * 500 + [good[:-10]] + [good] * 499)
    assert reads == [999], "the truncated message should not have cost a failed read"
    assert [(i, reason) for i, reason, _d in r.rejects] == [(500, "bad_json")]


# --------------------------------------------------------------------------- hostile input
BOUNDS = EventTimeBounds(
    earliest=datetime(2000, 1, 1, tzinfo=UTC), max_future=timedelta(minutes=1440)
)
NOW = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("ts", "verdict"),
    [
        ("1999-12-31T23:59:59.999Z", "time_out_of_bounds"),
        ("2000-01-01T00:00:00Z", "accept"),
        ("2026-01-06T12:00:00Z", "accept"),  # exactly a day ahead of the clock
        ("2026-01-06T12:00:00.001Z", "time_out_of_bounds"),
        ("2199-12-31T23:59:59Z", "time_out_of_bounds"),
        ("2300-01-01T00:00:00Z", "time_out_of_bounds"),  # the contract's own range
        ("0001-01-01T00:00:00Z", "time_out_of_bounds"),
    ],
)
def test_the_configured_time_window_rejects_with_a_named_reason(ts: str, verdict: str) -> None:
    msgs = [orjson.dumps({**BASE, "event_id": str(uuid.uuid4())}) for _ in range(50)]
    msgs[17] = orjson.dumps({**BASE, "event_id": str(uuid.uuid4()), "ts": ts})
    r = BatchValidator(VitalsEvent, BOUNDS).validate(msgs, now=NOW)
    got = {i: reason for i, reason, _d in r.rejects}
    assert got.get(17, "accept") == verdict
    assert set(got) <= {17}
    assert r.table.num_rows == 50 - len(got)
    assert 17 not in got or "2026-01-05" not in next(d for i, _r, d in r.rejects if i == 17)


def test_without_bounds_only_the_contracts_range_applies() -> None:
    old = orjson.dumps({**BASE, "ts": "1980-01-01T00:00:00Z"})
    assert BatchValidator(VitalsEvent).validate([old]).table.num_rows == 1
    assert BatchValidator(VitalsEvent, BOUNDS).validate([old], now=NOW).table.num_rows == 0


@given(st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), max_size=50))
def test_kafka_timestamps_outside_the_range_become_unknown(ts: list[int]) -> None:
    arr = np.array(ts, dtype=np.int64)
    out = sane_kafka_ts_ms(arr)
    lo, hi = KAFKA_TS_RANGE_MS
    assert ((out == arr) | (out == -1)).all()
    assert ((out == -1) | ((out >= lo) & (out < hi))).all()
    assert (out[(arr >= lo) & (arr < hi)] == arr[(arr >= lo) & (arr < hi)]).all()
    # Every sane value converts to a time in pandas' nanosecond range.
    pd.to_datetime(out[out >= 0], unit="ms", utc=True)


@given(
    st.text(max_size=80),
    st.sampled_from(["patient_id", "device_id"]),
)
def test_any_id_gets_the_same_verdict_from_both_paths(text: str, field: str) -> None:
    good = orjson.dumps({**BASE, "event_id": str(uuid.uuid4())})
    raw = orjson.dumps({**BASE, field: text})
    r = BatchValidator(VitalsEvent).validate([good, raw, good])
    verdict, expected = _pydantic(raw)
    rejects = {i: reason for i, reason, _d in r.rejects}
    if verdict == "accept":
        assert 1 not in rejects
    else:
        assert rejects[1] == expected == "bad_id"
    if verdict == "accept":
        assert all(c.isascii() and c.isprintable() and c not in " /\\" for c in text)
