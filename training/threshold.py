"""The operating threshold: where a risk score becomes an alert, chosen for an alert budget.

A ward can act on only so many alerts. The budget is set in one of two ways (config):

- ``sensitivity``: the lowest threshold is *not* wanted — the highest threshold that still
  catches at least this share of the rows that precede a deterioration;
- ``alerts_per_patient_day``: the lowest threshold whose alerts, spread over the patient
  days the data covers, stay within the budget.

Chosen on validation data (never the test set) and stored with the model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt

F = npt.NDArray[np.float64]


@dataclass(frozen=True)
class OperatingPoint:
    threshold: float
    sensitivity: float  # recall of positive rows
    precision: float
    alerts: int
    alerts_per_patient_day: float

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


def operating_point(
    y: npt.ArrayLike, scores: npt.ArrayLike, threshold: float, patient_days: float
) -> OperatingPoint:
    """Alert counts and rates when ``scores >= threshold`` alerts."""
    y_a = np.asarray(y, dtype=np.int8)
    alert = np.asarray(scores, dtype=np.float64) >= threshold
    tp = int((alert & (y_a == 1)).sum())
    pos = int((y_a == 1).sum())
    n_alerts = int(alert.sum())
    return OperatingPoint(
        threshold=float(threshold),
        sensitivity=tp / pos if pos else float("nan"),
        precision=tp / n_alerts if n_alerts else float("nan"),
        alerts=n_alerts,
        alerts_per_patient_day=n_alerts / patient_days if patient_days > 0 else float("nan"),
    )


def choose_threshold(
    y: npt.ArrayLike,
    scores: npt.ArrayLike,
    *,
    patient_days: float,
    sensitivity: float | None = None,
    alerts_per_patient_day: float | None = None,
) -> OperatingPoint:
    """The threshold meeting exactly one budget (see the module docstring).

    Raises:
        ValueError: not exactly one budget, no positive rows, or a budget no threshold meets.
    """
    if (sensitivity is None) == (alerts_per_patient_day is None):
        raise ValueError("give exactly one of sensitivity or alerts_per_patient_day")
    y_a = np.asarray(y, dtype=np.int8)
    s = np.asarray(scores, dtype=np.float64)
    if not (y_a == 1).any():
        raise ValueError("no positive rows: cannot set a threshold")
    order = np.argsort(-s, kind="stable")
    s_sorted = s[order]
    tp = np.cumsum(y_a[order] == 1)
    # Candidate thresholds are the distinct scores; alerting at s_sorted[i] alerts every
    # row with a score >= it, i.e. up to the last row sharing that score.
    last_of_value = np.r_[s_sorted[1:] != s_sorted[:-1], True]
    idx = np.nonzero(last_of_value)[0]
    if sensitivity is not None:
        if not 0 < sensitivity <= 1:
            raise ValueError("sensitivity must be in (0, 1]")
        recall = tp[idx] / tp[-1]
        ok = idx[recall >= sensitivity]
        pick = ok[0]  # the highest threshold that reaches the sensitivity
    else:
        assert alerts_per_patient_day is not None
        rate = (idx + 1) / patient_days
        ok = idx[rate <= alerts_per_patient_day]
        if len(ok) == 0:
            raise ValueError(
                f"even the highest score alerts {(idx[0] + 1) / patient_days:.2f} times per "
                f"patient-day, above the budget of {alerts_per_patient_day}"
            )
        pick = ok[-1]  # the lowest threshold within the budget
    return operating_point(y_a, s, float(s_sorted[pick]), patient_days)
