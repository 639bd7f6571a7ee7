"""The committee report's arithmetic: matched budgets, net benefit, calibration statistics."""

from __future__ import annotations

from typing import Any

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
    ward_budget,
    ward_budget_table,
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


def _ward(patients: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Sets every 30 min for 24 h; a third of patients deteriorate at hour 20 (label 1 in
    the 4 h before). NEWS2 climbs late and noisily; the risk is a noisy early warning."""
    rng = np.random.default_rng(seed)
    t0 = pd.Timestamp("2026-01-05T00:00:00Z")
    frames = []
    for i in range(patients):
        m = np.arange(0, 24 * 60, 30)
        sick = i % 3 == 0
        to_out = np.where(sick & (m < 20 * 60), 20 * 60 - m, np.nan)
        label = (to_out <= 240).astype(int)
        news2 = rng.integers(0, 5, len(m)) + np.where(sick & (m > 17 * 60), 4, 0)
        frames.append(pd.DataFrame({
            "patient_id": f"p{i}", "ts": t0 + pd.to_timedelta(m, unit="min"), "label": label,
            "minutes_to_outcome": to_out, "news2_total": news2, "news2_red": 0,
        }))  # fmt: skip
    rows = pd.concat(frames, ignore_index=True)
    early = rows["minutes_to_outcome"].between(0, 360).to_numpy()
    risk = np.clip(0.1 + 0.5 * early + rng.normal(0, 0.08, len(rows)), 0, 1)
    return rows, risk


@pytest.mark.parametrize("quiet", [0, 60, 240])
def test_the_model_never_gets_more_ward_alerts_than_the_trigger(quiet: int) -> None:
    rows, risk = _ward(30, seed=quiet)
    policy = AlertPolicySettings(quiet_minutes=quiet, margin=0.15)
    w = ward_budget(rows, risk, TRIGGERS["news2_ge5"], 15.0, policy)
    fired = TRIGGERS["news2_ge5"].fires(rows["news2_total"].to_numpy(), rows["news2_red"])
    assert w.trigger_alerts == ward_alerts(rows, fired, rows["news2_total"] / 20, policy) > 0
    assert 0 < w.model_alerts <= w.trigger_alerts
    # The lowest such threshold: the next distinct risk below it raises too many.
    below = np.unique(risk[risk < w.threshold])
    if len(below):
        more = ward_alerts(rows, risk >= below[-1], risk, policy)
        assert more > w.trigger_alerts or more == w.model_alerts  # ties of the policy
    assert w.model_alerts == ward_alerts(rows, risk >= w.threshold, risk, policy)
    # This risk is the sharper signal: at no more ward alerts, as many episodes and a
    # higher share of true alerts. (Its lead is not always longer: an alert before the
    # horizon opens a quiet period that can hide the next one.)
    assert w.model_lead["detected"] >= w.trigger_lead["detected"]
    assert w.model_ppv >= w.trigger_ppv
    m = w.metrics()
    assert m["model_at_news2_ge5_ward_budget_alerts_per_patient_day"] == w.model_alerts / 15
    assert m["news2_ge5_ward_alert_ppv"] == pytest.approx(
        rows["label"].to_numpy()[ward_alerts_mask(rows, fired, policy)].mean()
    )


def ward_alerts_mask(rows: pd.DataFrame, fired: np.ndarray, policy: AlertPolicySettings) -> Any:
    from training.clinical import alerts_raised

    return alerts_raised(rows, fired, rows["news2_total"].to_numpy() / 20, policy)


def test_a_trigger_that_never_fires_leaves_the_model_no_alerts() -> None:
    rows, risk = _ward(6, seed=1)
    rows["news2_total"] = 0
    w = ward_budget(rows, risk, TRIGGERS["news2_ge7"], 3.0, AlertPolicySettings(60, 0.15))
    assert (w.trigger_alerts, w.model_alerts, w.threshold) == (0, 0, float("inf"))
    assert np.isnan(w.model_ppv)
    assert w.model_lead["detected"] == 0


def test_matched_comparisons_carry_the_ward_budget_into_metrics_and_table() -> None:
    rows, risk = _ward(12, seed=3)
    policy = AlertPolicySettings(60, 0.15)
    c = matched_comparison(rows, risk, TRIGGERS["news2_ge5_or_red"], 6.0, policy)
    assert c.ward is not None
    assert "model_at_news2_ge5_or_red_ward_budget_alert_ppv" in c.metrics()
    table = ward_budget_table({"news2_ge5_or_red": c})
    assert list(table["rule"]) == ["NEWS2 ≥ 5 or red", "model, NEWS2 ≥ 5 or red's ward alerts"]
    assert matched_comparison(rows, risk, TRIGGERS["news2_ge5"], 6.0).ward is None


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
