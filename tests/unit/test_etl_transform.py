"""The ETL's one-pass row work (pandas, no Spark): dedupe, time bounds, quarantine, counts."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from pipelines.etl.transform import (
    INPUT_COLUMNS,
    MINUTES_ARROW,
    QUARANTINE_ARROW,
    Bounds,
    Transformed,
    duplicate_mask,
    format_raw,
    transform_events,
)

T0 = pd.Timestamp("2026-01-05T00:57:00Z")
H00, H01 = "date=2026-01-05/hour=00", "date=2026-01-05/hour=01"
NORMAL: dict[str, Any] = {
    "heart_rate": 80.0, "systolic_bp": 120.0, "diastolic_bp": 75.0, "spo2": 97.0,
    "resp_rate": 16.0, "temperature": 37.0, "consciousness": "A", "on_oxygen": False,
}  # fmt: skip
BOUNDS = Bounds(
    pending=frozenset({H01}),
    future=pd.Timestamp("2026-01-06T00:00:00Z"),
    too_old=pd.Timestamp("2025-01-01T00:00:00Z"),
    run_id="run-1",
)
BOUNDS_TIMES = (BOUNDS.future, BOUNDS.too_old)
NO_OTHER_VITAL: dict[str, Any] = dict.fromkeys(
    ("systolic_bp", "diastolic_bp", "spo2", "resp_rate", "temperature")
)


def event(i: int, minute: float | None, patient: str = "p1", **over: Any) -> dict[str, Any]:
    ts = over.pop("ts", None)
    ts = T0 + pd.Timedelta(minutes=minute) if ts is None else ts
    return {
        "event_id": over.pop("event_id", f"{patient}-e{i}"),
        "patient_id": patient,
        "ts": ts,
        **NORMAL,
        "landed_at": ts + pd.Timedelta(seconds=1),
        "kafka_partition": 0,
        "kafka_offset": i,
        **over,
    }


def frame(*rows: dict[str, Any]) -> pd.DataFrame:
    """Rows as the Spark job hands them over: by patient, then time, then event_id."""
    df = pd.DataFrame(list(rows))[list(INPUT_COLUMNS)]
    return df.sort_values(["patient_id", "ts", "event_id"], ignore_index=True)


def quarantine(out: Transformed) -> pd.DataFrame:
    tables = list(out.quarantine.values())
    if not tables:
        return pd.DataFrame(columns=QUARANTINE_ARROW.names)
    return pa.concat_tables(tables).to_pandas()


def reconciles(out: Transformed) -> bool:
    return all(
        c["raw_rows"] == c["source_rows"] + c["quarantined_rows"] + c["duplicates"]
        for c in out.counts.values()
    )


def test_first_landed_copy_wins_and_the_copy_counts_as_a_duplicate() -> None:
    t = T0 + pd.Timedelta(minutes=5)
    first = event(1, 5, heart_rate=90.0, landed_at=t + pd.Timedelta(seconds=1), kafka_offset=7)
    # Same event, landed later (a re-delivery), carrying a value we can tell apart.
    again = event(1, 5, heart_rate=91.0, landed_at=t + pd.Timedelta(seconds=9), kafka_offset=3)
    out = transform_events(frame(again, first, event(2, 6)), BOUNDS)
    minutes = out.minutes[H01].to_pandas()
    assert minutes.loc[minutes["minute"] == t, "heart_rate"].item() == 90.0
    assert out.counts[H01] == {
        "raw_rows": 3, "source_rows": 2, "quarantined_rows": 0, "duplicates": 1,
        "corrected_values": 0, "rejected_values": 0, "minute_rows": 2,
    }  # fmt: skip


def test_same_landing_time_falls_back_to_kafka_partition_then_offset() -> None:
    landed = T0 + pd.Timedelta(minutes=10)
    a = event(1, 5, heart_rate=90.0, landed_at=landed, kafka_partition=1, kafka_offset=1)
    b = event(1, 5, heart_rate=91.0, landed_at=landed, kafka_partition=0, kafka_offset=9)
    c = event(1, 5, heart_rate=92.0, landed_at=landed, kafka_partition=0, kafka_offset=4)
    out = transform_events(frame(a, b, c), BOUNDS)
    assert out.minutes[H01].to_pandas()["heart_rate"].tolist() == [92.0]
    assert out.counts[H01]["duplicates"] == 2


def test_impossible_times_are_quarantined_as_rows_with_their_reason() -> None:
    future = event(1, 0, ts=pd.Timestamp("2026-01-07T01:00:00Z"))
    old = event(2, 0, ts=pd.Timestamp("2024-06-01T01:00:00Z"))
    ok = event(3, 4)
    pending = frozenset({H01, "date=2026-01-07/hour=01", "date=2024-06-01/hour=01"})
    out = transform_events(frame(old, ok, future), Bounds(pending, *BOUNDS_TIMES, "run-1"))
    q = quarantine(out)
    assert sorted(zip(q["event_id"], q["scope"], q["reason"], strict=True)) == [
        ("p1-e1", "row", "ts_future"),
        ("p1-e2", "row", "ts_too_old"),
    ]
    assert q["field"].isna().all()
    assert q["raw_value"].isna().all()
    assert (q["run_id"] == "run-1").all()
    assert out.counts["date=2026-01-07/hour=01"]["quarantined_rows"] == 1
    assert out.counts["date=2024-06-01/hour=01"]["quarantined_rows"] == 1
    assert set(out.minutes) == {H01}  # neither bad time made a minute
    assert reconciles(out)


def test_rejected_values_keep_their_raw_value_and_unusable_events_are_rows() -> None:
    rows = frame(
        event(1, 3, heart_rate=350.0),  # one value rejected, the event stays
        event(2, 4, systolic_bp=80.0, diastolic_bp=90.0),  # inverted pressure: both go
        # Nothing usable left: every measured vital impossible.
        event(3, 5, heart_rate=0.0, **NO_OTHER_VITAL),
        event(4, 6, temperature=100.4),  # °F: corrected, not quarantined
    )
    out = transform_events(rows, BOUNDS)
    q = quarantine(out).sort_values("event_id")
    got = list(zip(q["event_id"], q["scope"], q["field"], q["raw_value"], q["reason"], strict=True))
    assert got == [
        ("p1-e1", "value", "heart_rate", "350.0", "impossible:heart_rate"),
        ("p1-e2", "value", "blood_pressure", "80.0/90.0", "impossible:blood_pressure"),
        ("p1-e3", "row", None, None, "impossible:heart_rate"),
    ]
    c = out.counts[H01]
    assert (c["raw_rows"], c["source_rows"], c["quarantined_rows"]) == (4, 3, 1)
    assert (c["corrected_values"], c["rejected_values"]) == (1, 3)
    minutes = out.minutes[H01].to_pandas().set_index("minute")
    assert minutes.loc[T0 + pd.Timedelta(minutes=6), "temperature"] == 38.0
    # The rejected heart rate is not replaced: the patient's first minute has none to carry.
    assert np.isnan(minutes.loc[T0 + pd.Timedelta(minutes=3), "heart_rate"])


def test_context_hours_inform_the_pending_hour_but_are_neither_output_nor_counted() -> None:
    # 00:57-00:59 are context (hour 00 is not pending); 01:00 has no heart rate.
    rows = frame(
        event(1, 0), event(2, 1), event(3, 2, heart_rate=77.0), event(4, 3, heart_rate=None),
        event(5, 4, heart_rate=350.0),
    )  # fmt: skip
    out = transform_events(rows, BOUNDS)
    assert set(out.counts) == {H01}
    assert out.counts[H01]["raw_rows"] == 2
    minutes = out.minutes[H01].to_pandas()
    assert minutes["minute"].dt.hour.unique().tolist() == [1]
    # Bounded forward-fill reaches back into the context hour.
    assert minutes["heart_rate"].tolist() == [77.0, 77.0]
    assert minutes["n_heart_rate"].tolist() == [0, 0]
    assert out.quarantine[H01].num_rows == 1
    assert reconciles(out)


def test_outputs_have_the_zones_arrow_schemas() -> None:
    out = transform_events(frame(event(1, 3, heart_rate=350.0), event(2, 4)), BOUNDS)
    assert out.minutes[H01].schema == MINUTES_ARROW
    assert out.quarantine[H01].schema == QUARANTINE_ARROW
    assert out.minutes[H01].schema.metadata is None


def test_patients_can_be_split_between_calls_without_changing_anything() -> None:
    rng = np.random.default_rng(3)
    rows = []
    for p in range(6):
        for i in range(40):
            over: dict[str, Any] = {}
            if rng.random() < 0.2:
                over["heart_rate"] = float(rng.choice([0.0, 230.0, 350.0, np.nan]))
            if rng.random() < 0.2:
                over["temperature"] = 100.4
            rows.append(event(i, float(rng.uniform(0, 10)), patient=f"p{p}", **over))
            if rng.random() < 0.1:
                rows.append(event(i, None, patient=f"p{p}", kafka_offset=i + 100,
                                  ts=rows[-1]["ts"]))  # fmt: skip
    df = frame(*rows)
    both = frozenset({H00, H01})
    bounds = Bounds(both, BOUNDS.future, BOUNDS.too_old, "r")
    whole = transform_events(df, bounds)
    cut = df["patient_id"].isin(["p0", "p1", "p2"])
    parts = [transform_events(df[m].reset_index(drop=True), bounds) for m in (cut, ~cut)]

    def table(ts: list[dict[str, pa.Table]], q: str, key: list[str]) -> pd.DataFrame:
        got = [t[q] for t in ts if q in t]
        return pa.concat_tables(got).to_pandas().sort_values(key, ignore_index=True)

    for q in (H00, H01):
        pd.testing.assert_frame_equal(
            table([whole.minutes], q, ["patient_id", "minute"]),
            table([p.minutes for p in parts], q, ["patient_id", "minute"]),
        )
        pd.testing.assert_frame_equal(
            table([whole.quarantine], q, ["event_id", "reason"]),
            table([p.quarantine for p in parts], q, ["event_id", "reason"]),
        )
        summed = {k: sum(p.counts[q][k] for p in parts) for k in whole.counts[q]}
        assert summed == whole.counts[q]
    assert sum(c["duplicates"] for c in whole.counts.values()) > 0
    assert reconciles(whole)


@pytest.mark.parametrize(
    ("x", "text"),
    [
        (120.0, "120.0"), (39.5, "39.5"), (0.0, "0.0"), (-5.0, "-5.0"), (0.001, "0.001"),
        (9999999.5, "9999999.5"), (1e7, "1.0E7"), (12345678.0, "1.2345678E7"),
        (1.5e-4, "1.5E-4"), (-2.5e-5, "-2.5E-5"), (float("nan"), None),
    ],
)  # fmt: skip
def test_raw_values_are_written_as_spark_casts_a_double(x: float, text: str | None) -> None:
    assert format_raw(x) == text


def test_an_hour_without_events_still_counts_the_minutes_it_holds() -> None:
    h02 = "date=2026-01-05/hour=02"
    # 00:58 (context) and 02:05: the minute grid runs through all of hour 01.
    out = transform_events(frame(event(1, 1), event(2, 68)), Bounds(
        frozenset({H01, h02}), *BOUNDS_TIMES, "r"
    ))  # fmt: skip
    assert out.minutes[H01].num_rows == 60
    assert out.counts[H01] == {
        "raw_rows": 0, "source_rows": 0, "quarantined_rows": 0, "duplicates": 0,
        "corrected_values": 0, "rejected_values": 0, "minute_rows": 60,
    }  # fmt: skip
    assert out.counts[h02]["minute_rows"] == out.minutes[h02].num_rows == 6


def test_a_call_with_nothing_usable_quarantines_its_rows() -> None:
    far = pd.Timestamp("2026-01-07T01:00:00Z")
    q = "date=2026-01-07/hour=01"
    rows = frame(*(event(i, None, ts=far + pd.Timedelta(minutes=i)) for i in range(3)))
    out = transform_events(rows, Bounds(frozenset({q}), *BOUNDS_TIMES, "r"))
    assert out.minutes == {}
    assert out.quarantine[q].num_rows == 3
    assert out.counts[q]["quarantined_rows"] == out.counts[q]["raw_rows"] == 3


def test_times_in_any_unit_and_without_a_zone_read_as_utc() -> None:
    rows = frame(event(1, 3, heart_rate=350.0), event(2, 4), event(3, 5))
    naive_us = rows.assign(
        ts=rows["ts"].dt.tz_localize(None).astype("datetime64[us]"),
        landed_at=rows["landed_at"].dt.tz_localize(None).astype("datetime64[us]"),
    )
    a, b = transform_events(rows, BOUNDS), transform_events(naive_us, BOUNDS)
    assert a.counts == b.counts
    assert a.minutes[H01].equals(b.minutes[H01])
    assert a.quarantine[H01].equals(b.quarantine[H01])


def test_a_colliding_event_key_costs_a_comparison_never_a_row() -> None:
    t = T0 + pd.Timedelta(minutes=5)
    rows = frame(
        event(1, 4), event(2, 5, landed_at=t + pd.Timedelta(seconds=3)),
        event(2, 5, landed_at=t + pd.Timedelta(seconds=1), kafka_offset=9), event(3, 6),
    )  # fmt: skip
    plain = duplicate_mask(rows)
    every_key_equal = duplicate_mask(rows.assign(event_key=np.int64(7)))
    distinct_keys = duplicate_mask(rows.assign(event_key=np.arange(len(rows), dtype=np.int64)))
    assert plain.tolist() == every_key_equal.tolist()
    assert plain.sum() == 1
    assert rows["landed_at"][plain].item() == t + pd.Timedelta(seconds=3)  # the later copy
    assert not distinct_keys.any()  # the key is trusted to tell rows apart when it differs
