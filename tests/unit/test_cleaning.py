"""Per-event cleaning rules, table-driven, plus batch/online parity and no look-ahead."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from features.cleaning import VITALS, clean_events

T0 = pd.Timestamp("2026-01-05T10:00:00Z")
NORMAL: dict[str, Any] = {
    "heart_rate": 80.0, "systolic_bp": 120.0, "diastolic_bp": 75.0, "spo2": 97.0,
    "resp_rate": 16.0, "temperature": 37.0, "consciousness": "A", "on_oxygen": False,
}  # fmt: skip


def events(*rows: dict[str, Any], patient: str = "p1") -> pd.DataFrame:
    """Readings one minute apart; each row overrides the normal reading."""
    out = []
    for i, r in enumerate(rows):
        out.append(
            {"event_id": f"e{i}", "patient_id": patient, "ts": T0 + pd.Timedelta(minutes=i),
             **NORMAL, **r}
        )  # fmt: skip
    return pd.DataFrame(out)


def last(rows: pd.DataFrame) -> pd.Series:
    return rows.iloc[-1]


@pytest.mark.parametrize(
    ("reading", "field", "expect_value", "rejection", "correction"),
    [
        ({"temperature": 100.4}, "temperature", 38.0, "", "fahrenheit:temperature"),
        ({"temperature": 36.6}, "temperature", 36.6, "", ""),
        ({"temperature": 0.0}, "temperature", None, "impossible:temperature", ""),
        ({"temperature": 59.4}, "temperature", None, "impossible:temperature", ""),
        ({"heart_rate": 0.0}, "heart_rate", None, "impossible:heart_rate", ""),
        ({"heart_rate": 350.0}, "heart_rate", None, "impossible:heart_rate", ""),
        ({"resp_rate": 99.0}, "resp_rate", None, "impossible:resp_rate", ""),
        ({"spo2": 127.0}, "spo2", None, "impossible:spo2", ""),
        ({"systolic_bp": 420.0}, "systolic_bp", None, "impossible:systolic_bp", ""),
        ({"systolic_bp": 80.0, "diastolic_bp": 90.0}, "systolic_bp", None,
         "impossible:blood_pressure", ""),
        # A probe slipping: SpO2 40 with a normal heart rate after normal readings.
        ({"spo2": 40.0}, "spo2", None, "artifact:spo2", ""),
        ({"spo2": 65.0}, "spo2", None, "artifact:spo2", ""),
        # A real crisis: deep desaturation with a heart-rate response is kept.
        ({"spo2": 65.0, "heart_rate": 150.0}, "spo2", 65.0, "", ""),
        ({"heart_rate": 230.0}, "heart_rate", None, "artifact:heart_rate", ""),
        ({"heart_rate": 125.0}, "heart_rate", 125.0, "", ""),
    ],
)  # fmt: skip
def test_rules(
    reading: dict[str, Any], field: str, expect_value: float | None, rejection: str, correction: str
) -> None:
    cleaned, _ = clean_events(events({}, {}, reading))
    row = last(cleaned)
    if expect_value is None:
        assert np.isnan(row[field])
    else:
        assert row[field] == pytest.approx(expect_value, abs=0.01)
    assert row["rejections"] == rejection
    assert row["corrections"] == correction
    assert row["status"] == "ok"  # other vitals of the reading survive


def test_spo2_60_without_a_recent_normal_reading_is_kept() -> None:
    cleaned, _ = clean_events(events({"spo2": 75.0}, {"spo2": 68.0}, {"spo2": 62.0}))
    assert cleaned["spo2"].tolist() == [75.0, 68.0, 62.0]


def test_gradual_tachycardia_is_not_an_artifact() -> None:
    rows = [{"heart_rate": hr} for hr in np.linspace(100, 190, 40)]
    cleaned, _ = clean_events(events(*rows))
    assert cleaned["rejections"].eq("").all()


def test_a_reading_with_nothing_usable_is_quarantined() -> None:
    only_bad = dict.fromkeys(VITALS, np.nan) | {"heart_rate": 480.0}
    nothing = dict.fromkeys(VITALS, np.nan)
    cleaned, _ = clean_events(events({}, only_bad, nothing))
    assert cleaned["status"].tolist() == ["ok", "quarantined", "ok"]
    assert cleaned["rejections"].iloc[1] == "impossible:heart_rate"


def test_no_events_clean_to_nothing_and_keep_the_state() -> None:
    _, state = clean_events(events({}, {"spo2": 96.0}))
    empty, after = clean_events(events({}).iloc[:0], state)
    assert empty.empty
    assert {"status", "corrections", "rejections"} <= set(empty.columns)
    assert list(after.patients) == list(state.patients)
    np.testing.assert_array_equal(after.values, state.values)


def _stream(seed: int, n: int = 400) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        r: dict[str, Any] = {}
        u = rng.random()
        if u < 0.05:
            r["spo2"] = float(rng.integers(0, 50))
        elif u < 0.08:
            r["heart_rate"] = float(rng.integers(170, 250))
        elif u < 0.10:
            r["temperature"] = 98.6
        elif u < 0.12:
            r["spo2"] = np.nan
        r["heart_rate"] = r.get("heart_rate", 80.0 + 10 * np.sin(i / 30))
        rows.append(r)
    a = events(*rows, patient="a")
    b = events(*rows[::-1], patient="b")
    return pd.concat([a, b]).sort_values(["patient_id", "ts"]).reset_index(drop=True)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_online_in_pieces_equals_batch_at_once(seed: int) -> None:
    stream = _stream(seed)
    whole, _ = clean_events(stream)
    # The scorer sees the stream in poll batches across patients, carrying state.
    pieces = []
    state = None
    order = stream.sort_values("ts", kind="stable")
    for chunk in np.array_split(order, 37):
        part = chunk.sort_values(["patient_id", "ts"])
        out, state = clean_events(part, state)
        pieces.append(out)
    online = pd.concat(pieces).sort_values(["patient_id", "ts"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(online, whole)


def test_no_look_ahead() -> None:
    stream = _stream(4)
    cut = stream["ts"] <= T0 + pd.Timedelta(minutes=200)
    before, _ = clean_events(stream[cut].reset_index(drop=True))
    whole, _ = clean_events(stream)
    pd.testing.assert_frame_equal(whole[cut.to_numpy()].reset_index(drop=True), before)
