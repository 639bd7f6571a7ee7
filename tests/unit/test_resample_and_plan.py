from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import pytest

from features.resample import FFILL_MINUTES, MINUTE_COLUMNS, to_minutes
from pipelines.etl.plan import fingerprints, plan
from stack.catalog import hour_of, partition_of

T0 = pd.Timestamp("2026-01-05T10:00:00Z")


def ev(minute: float, patient: str = "p", **vals: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "patient_id": patient, "ts": T0 + pd.Timedelta(minutes=minute), "heart_rate": np.nan,
        "systolic_bp": np.nan, "diastolic_bp": np.nan, "spo2": np.nan, "resp_rate": np.nan,
        "temperature": np.nan, "consciousness": None, "on_oxygen": None,
    }  # fmt: skip
    return base | vals


def test_aggregation_within_a_minute() -> None:
    df = pd.DataFrame(
        [
            ev(0.1, heart_rate=80, consciousness="A", on_oxygen=False),
            ev(0.5, heart_rate=90, consciousness="V", on_oxygen=True),
            ev(0.9, heart_rate=200, consciousness="C"),
        ]
    )
    m = to_minutes(df)
    assert list(m.columns) == list(MINUTE_COLUMNS)
    row = m.iloc[0]
    assert row["heart_rate"] == 90  # median, robust to the odd value
    assert row["consciousness"] == "V"  # the worst level in the minute
    assert row["on_oxygen"] is True
    assert row["n_heart_rate"] == 3
    assert row["n_consciousness"] == 3
    assert row["n_events"] == 3


def test_grid_and_bounded_forward_fill() -> None:
    gap = FFILL_MINUTES["heart_rate"] + 3
    df = pd.DataFrame([ev(0, heart_rate=70, systolic_bp=120), ev(gap + 1, heart_rate=75)])
    m = to_minutes(df)
    assert len(m) == gap + 2  # every minute from first to last, gaps included
    hr = m["heart_rate"].tolist()
    assert hr[: FFILL_MINUTES["heart_rate"] + 1] == [70.0] * (FFILL_MINUTES["heart_rate"] + 1)
    assert np.isnan(hr[FFILL_MINUTES["heart_rate"] + 1])  # carried no further than the limit
    assert m["systolic_bp"].notna().all()  # a cuff reading lasts half an hour
    assert m["n_heart_rate"].tolist() == [1] + [0] * gap + [1]
    assert m["n_events"].sum() == 2


def test_patients_do_not_leak_into_each_other() -> None:
    df = pd.DataFrame([ev(0, "a", heart_rate=60), ev(3, "b", heart_rate=100), ev(2, "a")])
    m = to_minutes(df)
    assert m.groupby("patient_id").size().to_dict() == {"a": 3, "b": 1}
    assert m[m.patient_id == "b"]["heart_rate"].tolist() == [100.0]
    assert m["minute"].dt.tz is not None


def test_empty_input_gives_the_schema() -> None:
    assert list(to_minutes(pd.DataFrame([ev(0)]).iloc[0:0]).columns) == list(MINUTE_COLUMNS)


def test_partition_names_round_trip() -> None:
    h = datetime(2026, 1, 5, 7, tzinfo=UTC)
    assert partition_of(h) == "date=2026-01-05/hour=07"
    assert hour_of("date=2026-01-05/hour=07") == h
    with pytest.raises(ValueError, match="not a partition name"):
        hour_of("2026-01-05/07")


def test_fingerprints_change_when_files_arrive() -> None:
    files = ["raw/vitals/date=2026-01-05/hour=07/a.parquet", "raw/outcomes/x/y/z.parquet"]
    one = fingerprints(files, "raw/vitals")
    two = fingerprints([*files, "raw/vitals/date=2026-01-05/hour=07/b.parquet"], "raw/vitals")
    assert set(one) == {"date=2026-01-05/hour=07"}
    assert one != two


P = [f"date=2026-01-05/hour={h:02d}" for h in range(6)]


def test_plan_processes_new_and_changed_partitions_with_neighbours() -> None:
    raw = dict.fromkeys(P, "v1")
    first = plan(raw, {}, context_hours=2)
    assert first.pending == P
    assert first.context == []
    assert plan(raw, raw, context_hours=2).pending == []
    late = dict(raw) | {P[2]: "v2"}  # late events landed in hour 2
    p = plan(late, raw, context_hours=2)
    assert p.pending == P[2:5]  # hour 2 and the two hours forward-filled from it
    assert p.context == P[0:2]
    backfill = plan(raw, raw, context_hours=1, only=[P[0]], force=True)
    assert backfill.pending == P[0:2]
    assert backfill.context == []


def test_plan_records_the_fingerprints_it_saw() -> None:
    raw = dict.fromkeys(P, "v1")
    p = plan(raw, {}, context_hours=1, only=[P[3]])
    assert p.fingerprints == {P[3]: "v1", P[4]: "v1"}
