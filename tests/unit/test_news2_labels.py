"""NEWS2 on every band boundary (both SpO2 scales), qSOFA, and labels on hand-built timelines."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.labels import make_labels
from features.news2 import (
    TIER_HIGH,
    TIER_LOW,
    TIER_LOW_MEDIUM,
    TIER_MEDIUM,
    TRIGGERS,
    monitoring_interval_minutes,
    news2,
    qsofa,
    response_tier,
    score_parameter,
    score_spo2,
)
from features.spec import FEATURE_NAMES, FEATURE_SET_VERSION, FEATURES, digest

# (value, points) at and either side of every boundary of the RCP 2017 chart.
BOUNDARIES = {
    "resp_rate": [
        (4, 3), (8, 3), (9, 1), (11, 1), (12, 0), (20, 0), (21, 2), (24, 2), (25, 3), (40, 3),
        (8.5, 1), (20.5, 2),
    ],
    "heart_rate": [
        (30, 3), (40, 3), (41, 1), (50, 1), (51, 0), (90, 0), (91, 1), (110, 1), (111, 2),
        (130, 2), (131, 3), (180, 3),
    ],
    "systolic_bp": [
        (70, 3), (90, 3), (91, 2), (100, 2), (101, 1), (110, 1), (111, 0), (219, 0), (220, 3),
    ],
    "temperature": [
        (34.0, 3), (35.0, 3), (35.1, 1), (36.0, 1), (36.1, 0), (38.0, 0), (38.1, 1), (39.0, 1),
        (39.1, 2), (41.0, 2),
    ],
    "spo2_scale1": [(85, 3), (91, 3), (92, 2), (93, 2), (94, 1), (95, 1), (96, 0), (100, 0)],
}  # fmt: skip

# Scale 2: (spo2, on_oxygen, points).
SCALE2 = [
    (80, 0, 3), (83, 0, 3), (84, 0, 2), (85, 0, 2), (86, 0, 1), (87, 0, 1), (88, 0, 0),
    (92, 0, 0), (93, 0, 0), (97, 0, 0), (100, 0, 0),
    (83, 1, 3), (84, 1, 2), (86, 1, 1), (88, 1, 0), (92, 1, 0), (93, 1, 1), (94, 1, 1),
    (95, 1, 2), (96, 1, 2), (97, 1, 3), (100, 1, 3),
]  # fmt: skip


@pytest.mark.parametrize("param", sorted(BOUNDARIES))
def test_news2_parameter_bands(param: str) -> None:
    values = np.array([v for v, _ in BOUNDARIES[param]], dtype=float)
    expected = [p for _, p in BOUNDARIES[param]]
    assert score_parameter(param, values).tolist() == expected


def test_spo2_scale2_on_air_and_on_oxygen() -> None:
    spo2 = np.array([s for s, _, _ in SCALE2], dtype=float)
    o2 = np.array([o for _, o, _ in SCALE2], dtype=float)
    got = score_spo2(spo2, o2, np.ones_like(spo2))
    assert got.tolist() == [p for _, _, p in SCALE2]
    # The same saturations on scale 1 ignore oxygen for the SpO2 row.
    assert (
        score_spo2(spo2, o2, np.zeros_like(spo2)).tolist()
        == score_parameter("spo2_scale1", spo2).tolist()
    )


def test_news2_aggregate_and_missing() -> None:
    nan = np.nan
    arr = lambda *v: np.array(v, dtype=float)  # noqa: E731
    s = news2(
        resp_rate=arr(16, 26, nan),
        spo2=arr(97, 90, 97),
        on_oxygen=arr(0, 1, nan),
        systolic_bp=arr(120, 88, 120),
        heart_rate=arr(70, 135, 70),
        avpu_rank=arr(0, 2, nan),
        temperature=arr(37.0, 39.5, 37.0),
        scale2=arr(0, 0, 0),
    )
    # Healthy: 0. Septic shock on oxygen: 3 RR + 3 SpO2 + 2 O2 + 3 SBP + 3 HR + 3 V + 2 T.
    assert s["total"].tolist() == [0, 19, 0]
    assert s["missing"].tolist() == [0, 0, 3]
    assert np.isnan(s["resp_rate"][2])
    assert s["red"].tolist() == [0, 1, 0]
    assert s["tier"].tolist() == [TIER_LOW, TIER_HIGH, TIER_LOW]
    q = qsofa(resp_rate=arr(16, 26, nan), systolic_bp=arr(120, 88, nan), avpu_rank=arr(0, 2, nan))
    assert q["score"].tolist() == [0, 3, 0]


def _one(**over: float) -> dict[str, np.ndarray]:
    base = {"resp_rate": 16, "spo2": 97, "on_oxygen": 0, "systolic_bp": 120, "heart_rate": 70,
                "avpu_rank": 0, "temperature": 37.0, "scale2": 0}  # fmt: skip
    base.update(over)
    return news2(**{k: np.array([v], dtype=float) for k, v in base.items()})


@pytest.mark.parametrize(
    ("over", "total", "red", "tier", "every_min"),
    [
        ({}, 0, 0, TIER_LOW, 720),  # all normal: 12-hourly
        ({"heart_rate": 95}, 1, 0, TIER_LOW, 240),  # 1-4: 4-6-hourly (4 h by default)
        ({"avpu_rank": 1}, 3, 1, TIER_LOW_MEDIUM, 60),  # new confusion alone: red, hourly
        ({"resp_rate": 7}, 3, 1, TIER_LOW_MEDIUM, 60),  # RR ≤ 8 alone: red
        ({"resp_rate": 22, "heart_rate": 115, "temperature": 38.5}, 5, 0, TIER_MEDIUM, 60),
        ({"resp_rate": 22, "heart_rate": 115, "on_oxygen": 1, "temperature": 39.5}, 8, 0,
         TIER_HIGH, 0),  # ≥ 7: continuous
        ({"systolic_bp": 85, "heart_rate": 135, "resp_rate": 26}, 9, 1, TIER_HIGH, 0),
        ({"temperature": 39.5, "heart_rate": 115, "resp_rate": 22}, 6, 0, TIER_MEDIUM, 60),
    ],
)  # fmt: skip
def test_red_score_tier_and_monitoring_frequency(
    over: dict[str, float], total: int, red: int, tier: int, every_min: float
) -> None:
    """RCP 2017 charts 2 and 3 on hand-built observation sets."""
    s = _one(**over)
    assert (s["total"][0], s["red"][0], s["tier"][0]) == (total, red, tier)
    assert monitoring_interval_minutes(s["total"], s["red"])[0] == every_min


def test_triggers_fire_as_the_chart_says() -> None:
    total = np.array([0, 3, 3, 4, 5, 6, 7, 12], dtype=float)
    red = np.array([0, 0, 1, 1, 0, 1, 0, 1], dtype=float)
    fired = {k: t.fires(total, red).tolist() for k, t in TRIGGERS.items()}
    assert fired["news2_ge5"] == [False, False, False, False, True, True, True, True]
    assert fired["news2_ge7"] == [False] * 6 + [True, True]
    assert fired["news2_ge5_or_red"] == [False, False, True, True, True, True, True, True]
    # The tier is ordered like the triggers: ≥ 5-or-red fires exactly at low-medium and up.
    assert ((response_tier(total, red) >= TIER_LOW_MEDIUM) == fired["news2_ge5_or_red"]).all()


def test_feature_declaration_is_pinned_to_its_version() -> None:
    # Changing the feature set without bumping FEATURE_SET_VERSION breaks served models.
    assert (FEATURE_SET_VERSION, digest()) == ("vitals-v3", PINNED_DIGEST)
    assert len(set(FEATURE_NAMES)) == len(FEATURES)
    assert all(f.unit and f.description and f.dtype == "float64" for f in FEATURES)


PINNED_DIGEST = "036bce3dc61ad1dd"


def _ts(minutes: float) -> pd.Timestamp:
    return pd.Timestamp("2026-01-05T00:00:00Z") + pd.Timedelta(minutes=minutes)


def test_labels_on_hand_built_timelines() -> None:
    rows = pd.DataFrame(
        {
            "patient_id": ["a"] * 6 + ["b"] * 3,
            "ts": [_ts(m) for m in (0, 60, 100, 299, 300, 305)] + [_ts(m) for m in (0, 60, 200)],
        }
    )
    # a deteriorates at minute 300; b never does. Data known up to minute 400.
    outcomes = pd.DataFrame(
        {"patient_id": ["a", "a"], "ts": [_ts(300), _ts(350)], "kind": ["sepsis", "cardiac"]}
    )
    got = make_labels(rows, outcomes, horizon=pd.Timedelta(hours=4), observed_until=_ts(400))
    # a@0: outcome 300 min later > 240 → 0; a@60: exactly 240 → 1; a@100 → 1;
    # a@299: the outcome landed, but its horizon ends at 539 > 400 → censored like b@200;
    # a@300 (the outcome's own time) and after → excluded. b@0 and b@60 are known to be
    # negative (horizon ended by 400); b@200's horizon ends at 440 > 400 → censored.
    assert got["label"].tolist() == [0, 1, 1, pd.NA, pd.NA, pd.NA, 0, 0, pd.NA]
    assert got["label_status"].tolist() == [
        "labelled", "labelled", "labelled", "censored", "after_outcome", "after_outcome",
        "labelled", "labelled", "censored",
    ]  # fmt: skip
    assert got["outcome_kind"].iloc[0] == "sepsis"  # the first outcome counts
    assert got["minutes_to_outcome"].iloc[1] == 240
    assert got["minutes_to_outcome"].iloc[6:].isna().all()


@settings(max_examples=300, deadline=None)
@given(
    row_min=st.lists(st.integers(0, 1000), min_size=1, max_size=30),
    outcome_min=st.one_of(st.none(), st.integers(0, 1200)),
    until_min=st.integers(0, 1200),
    horizon_min=st.integers(1, 600),
)
def test_censoring_does_not_depend_on_the_outcome(
    row_min: list[int], outcome_min: int | None, until_min: int, horizon_min: int
) -> None:
    """Near the data's end, positives and negatives are censored alike.

    The rule that labelled a row iff it was positive *or* its horizon had passed kept the
    last stretch's positives and dropped its negatives, so time-to-end-of-data predicted
    the label. Here: a row before the outcome is labelled iff its whole horizon is
    observed, whatever the outcome.
    """
    rows = pd.DataFrame({"patient_id": "p", "ts": [_ts(m) for m in row_min]})
    outcomes = pd.DataFrame(
        {"patient_id": ["p"] * (outcome_min is not None),
         "ts": [_ts(outcome_min)] if outcome_min is not None else [],
         "kind": ["sepsis"] * (outcome_min is not None)}
    )  # fmt: skip
    outcomes["ts"] = pd.to_datetime(outcomes["ts"], utc=True)
    horizon = pd.Timedelta(minutes=horizon_min)
    got = make_labels(rows, outcomes, horizon=horizon, observed_until=_ts(until_min))
    before = (
        np.ones(len(row_min), bool) if outcome_min is None
        else np.array(row_min) < outcome_min
    )  # fmt: skip
    whole_horizon_seen = np.array(row_min) + horizon_min <= until_min
    labelled = (got["label_status"] == "labelled").to_numpy()
    assert (labelled[before] == whole_horizon_seen[before]).all()
    assert got["label"].notna().to_numpy().tolist() == labelled.tolist()
    if outcome_min is not None:
        assert (got["label_status"].to_numpy()[~before] == "after_outcome").all()
        pos = before & (np.array(row_min) + horizon_min >= outcome_min)
        assert (got["label"].to_numpy()[labelled & pos] == 1).all()
        assert (got["label"].to_numpy()[labelled & ~pos] == 0).all()
