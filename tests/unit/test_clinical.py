"""The committee report's arithmetic: matched budgets, net benefit, calibration statistics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.news2 import TRIGGERS
from training.clinical import (
    AlertPolicySettings,
    calibration_stats,
    decision_curve,
    matched_comparison,
    net_benefit,
    top_k,
    ward_alerts,
)


def _rows() -> pd.DataFrame:
    # Two patients: a deteriorates (rows 0-3 precede the outcome within the horizon),
    # b does not. NEWS2 ≥ 5 fires on rows 2, 3 and 5 (a false alarm on b).
    return pd.DataFrame(
        {
            "patient_id": ["a"] * 4 + ["b"] * 3,
            "label": [1, 1, 1, 1, 0, 0, 0],
            "minutes_to_outcome": [200, 150, 100, 50, np.nan, np.nan, np.nan],
            "news2_total": [2, 3, 5, 6, 1, 5, 0],
            "news2_red": [0, 1, 0, 0, 0, 0, 0],
        }
    )


def test_the_model_gets_exactly_the_triggers_alert_count() -> None:
    rows = _rows()
    risk = np.array([0.9, 0.8, 0.7, 0.6, 0.1, 0.2, 0.05])
    c = matched_comparison(rows, risk, TRIGGERS["news2_ge5"], patient_days=1.0)
    assert c.trigger.alerts == c.model.alerts == 3
    assert c.trigger.sensitivity == pytest.approx(2 / 4)
    assert c.trigger.precision == pytest.approx(2 / 3)
    assert c.model.sensitivity == pytest.approx(3 / 4)  # its top 3 are rows 0-2
    assert c.model.precision == pytest.approx(1.0)
    assert c.model.threshold == pytest.approx(0.7)
    # Both caught a's episode; the model's first alert came 200 min before, NEWS2's 100.
    assert (c.trigger_lead["detected"], c.trigger_lead["median_minutes"]) == (1, 100)
    assert (c.model_lead["detected"], c.model_lead["median_minutes"]) == (1, 200)
    m = c.metrics()
    assert m["news2_ge5_ppv"] == pytest.approx(2 / 3)
    assert m["model_at_news2_ge5_episodes_caught_share"] == 1.0
    # ≥ 5 or red adds row 1: four alerts.
    red = matched_comparison(rows, risk, TRIGGERS["news2_ge5_or_red"], patient_days=2.0)
    assert red.trigger.alerts == red.model.alerts == 4
    assert red.trigger.alerts_per_patient_day == 2.0


def test_ward_alerts_follow_the_scorers_policy() -> None:
    t0 = pd.Timestamp("2026-01-05T00:00:00Z")
    rows = pd.DataFrame(
        {"patient_id": ["a"] * 6 + ["b"] * 2,
         "ts": [t0 + pd.Timedelta(minutes=m) for m in (0, 5, 10, 70, 75, 80)]
               + [t0, t0 + pd.Timedelta(minutes=5)]}
    )  # fmt: skip
    crossed = np.array([1, 1, 1, 1, 1, 1, 1, 0], dtype=bool)
    risk = np.array([0.2, 0.25, 0.4, 0.3, 0.3, 0.3, 0.5, 0.1])
    policy = AlertPolicySettings(quiet_minutes=60, margin=0.15)
    # a: first at 0, risk_rose at 10 (0.4 ≥ 0.2 + 0.15), quiet over at 70; b: first.
    assert ward_alerts(rows, crossed, risk, policy) == 4
    no_quiet = AlertPolicySettings(quiet_minutes=0, margin=0.15)
    assert ward_alerts(rows, crossed, risk, no_quiet) == 7
    # Matched comparisons carry both sides' ward alerts per patient-day.
    labelled = rows.assign(
        label=[1, 1, 1, 1, 1, 1, 0, 0], minutes_to_outcome=[90, 85, 80, 20, 15, 10, np.nan, np.nan],
        news2_total=[5, 5, 6, 7, 7, 7, 0, 0], news2_red=0,
    )  # fmt: skip
    c = matched_comparison(labelled, risk, TRIGGERS["news2_ge5"], 2.0, policy)
    assert c.trigger_ward_alerts == 2 / 2.0  # a at 0 and again at 70 (quiet period over)
    assert c.metrics()["model_at_news2_ge5_ward_alerts_per_patient_day"] == c.model_ward_alerts
    assert np.isnan(
        matched_comparison(labelled, risk, TRIGGERS["news2_ge5"], 2.0).model_ward_alerts
    )


@given(st.lists(st.floats(-1e6, 1e6), min_size=0, max_size=40), st.integers(0, 50))
def test_top_k_picks_k_highest(scores: list[float], k: int) -> None:
    s = np.array(scores, dtype=float)
    mask = top_k(s, k)
    assert mask.sum() == min(k, len(s))
    if 0 < mask.sum() < len(s):
        assert s[mask].min() >= s[~mask].max()


def test_net_benefit_and_decision_curve_by_hand() -> None:
    y = np.array([1, 1, 0, 0, 0, 0, 0, 0, 0, 0])
    alert = np.array([1, 0, 1, 0, 0, 0, 0, 0, 0, 0], dtype=bool)
    # TP 1, FP 1 of n 10 at pt 0.2: 0.1 − 0.1 · 0.25 = 0.075.
    assert net_benefit(y, alert, 0.2) == pytest.approx(0.075)
    risk = np.array([0.9, 0.3, 0.25, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])
    dc = decision_curve(y, risk, {"NEWS2 ≥ 5": alert}, [0.05, 0.2, 0.5])
    # Treat all: prevalence − (1 − prevalence) · pt / (1 − pt).
    assert dc["treat all"].tolist() == pytest.approx([0.2 - 0.8 * 0.05 / 0.95, 0.0, -0.6])
    assert dc["NEWS2 ≥ 5"].iloc[1] == pytest.approx(0.075)
    assert dc.loc[2, "model"] == pytest.approx(0.1)  # only row 0 ≥ 0.5: one TP
    assert (dc["treat none"] == 0).all()


def test_calibration_statistics_tell_calibrated_from_overconfident() -> None:
    rng = np.random.default_rng(3)
    true_logit = rng.normal(-3.5, 1.2, 200_000)
    p = 1 / (1 + np.exp(-true_logit))
    y = (rng.random(len(p)) < p).astype(int)
    good = calibration_stats(y, p)
    assert good["calibration_slope"] == pytest.approx(1.0, abs=0.05)
    assert good["calibration_intercept"] == pytest.approx(0.0, abs=0.1)
    assert good["brier_skill"] > 0
    assert good["mean_predicted"] == pytest.approx(good["observed_rate"], rel=0.05)
    # Over-confident and shifted up (a class-weighted model's scores): slope ≈ 0.5,
    # the mean risk far above the observed rate, Brier worse than the base rate.
    bad = calibration_stats(y, 1 / (1 + np.exp(-(2 * true_logit + 6))))
    assert bad["calibration_slope"] == pytest.approx(0.5, abs=0.05)
    assert bad["mean_predicted"] > 3 * bad["observed_rate"]
    assert bad["brier_skill"] < 0
    one_class = calibration_stats(np.zeros(5), np.full(5, 0.1))
    assert np.isnan(one_class["calibration_slope"])
    assert np.isnan(one_class["brier_skill"])


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.floats(0, 1)), min_size=2, max_size=60))
def test_calibration_statistics_never_crash(pairs: list[tuple[bool, float]]) -> None:
    y = np.array([a for a, _ in pairs], dtype=int)
    p = np.array([b for _, b in pairs], dtype=float)
    out = calibration_stats(y, p)
    assert 0 <= out["brier"] <= 1
