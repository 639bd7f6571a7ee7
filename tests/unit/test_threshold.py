"""Operating threshold for an alert budget, on hand-checked score lists."""

from __future__ import annotations

import numpy as np
import pytest

from training.threshold import choose_threshold, operating_point

#        scores: 0.9 0.8 0.8 0.7 0.6 0.5 0.4 0.3 0.2 0.1
Y = np.array([1, 0, 1, 1, 0, 0, 1, 0, 0, 0])
S = np.array([0.9, 0.8, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1])


def test_sensitivity_budget_takes_the_highest_threshold_that_reaches_it() -> None:
    p = choose_threshold(Y, S, patient_days=2.0, sensitivity=0.75)
    # ≥ 0.7 catches 3 of 4 positives with 4 alerts; ≥ 0.8 only 2 of 4.
    assert p.threshold == 0.7
    assert p.sensitivity == 0.75
    assert p.alerts == 4
    assert p.precision == 0.75
    assert p.alerts_per_patient_day == 2.0
    assert choose_threshold(Y, S, patient_days=2.0, sensitivity=1.0).threshold == 0.4


def test_alert_budget_takes_the_lowest_threshold_within_it() -> None:
    # 1.5 alerts per patient-day over 2 days = at most 3 alerts: ≥ 0.8 gives 3 (tied scores
    # alert together), ≥ 0.7 would give 4.
    p = choose_threshold(Y, S, patient_days=2.0, alerts_per_patient_day=1.5)
    assert p.threshold == 0.8
    assert p.alerts == 3
    with pytest.raises(ValueError, match="above the budget"):
        choose_threshold(Y, S, patient_days=2.0, alerts_per_patient_day=0.1)


def test_budget_must_be_exactly_one_and_positives_must_exist() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        choose_threshold(Y, S, patient_days=1.0)
    with pytest.raises(ValueError, match="exactly one"):
        choose_threshold(Y, S, patient_days=1.0, sensitivity=0.5, alerts_per_patient_day=1)
    with pytest.raises(ValueError, match="no positive rows"):
        choose_threshold(np.zeros(10), S, patient_days=1.0, sensitivity=0.5)


def test_operating_point_counts() -> None:
    p = operating_point(Y, S, 0.5, patient_days=4.0)
    assert (p.alerts, p.sensitivity, p.precision) == (6, 0.75, 0.5)
    assert p.to_dict()["alerts_per_patient_day"] == 1.5
