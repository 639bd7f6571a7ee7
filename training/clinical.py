"""What a deployment committee asks of a model beside the NEWS2 chart.

Every comparison here is at a *matched alert budget*: a NEWS2 trigger raises some number
of alerts on the held-out rows, and the model is given exactly as many (its highest
risks). At equal workload, which catches more of the rows that precede a deterioration,
with what positive predictive value, how many episodes, and how early?

Also here: the decision curve (Vickers & Elkin, *Med Decis Making* 2006;26:565-574) —
net benefit ``TP/n − FP/n · pt/(1 − pt)`` across threshold probabilities ``pt``, for the
model, for alerting on everyone and for each trigger — and calibration statistics
(slope and intercept of the logistic recalibration of the predicted log-odds, Brier
score and its skill against the base rate; Van Calster et al., *BMC Med* 2019;17:230).

Pure functions of arrays and frames; the training job and ``bench/bench_clinical.py``
call them on held-out patients.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from features.alerts import AlertPolicy
from features.news2 import TRIGGERS, Trigger
from stack.calibration import logit
from training.evaluate import bootstrap_weights, lead_times, subgroup_masks
from training.threshold import OperatingPoint, operating_point

F = npt.NDArray[np.float64]


@dataclass(frozen=True)
class MatchedComparison:
    """One NEWS2 trigger and the model given as many alerts, on the same rows."""

    key: str
    label: str
    trigger: OperatingPoint
    model: OperatingPoint
    trigger_lead: dict[str, float]
    model_lead: dict[str, float]
    # After the scorer's alert policy (quiet period, re-alert margin); NaN if not computed.
    trigger_ward_alerts: float = float("nan")
    model_ward_alerts: float = float("nan")
    ward: WardBudget | None = None  # the model held to the trigger's *ward* alerts

    def metrics(self) -> dict[str, float]:
        """Flat, MLflow-safe metric names: ``news2_ge5_ppv``, ``model_at_news2_ge5_ppv``…"""
        out: dict[str, float] = {}
        for prefix, op, lead, ward in (
            (self.key, self.trigger, self.trigger_lead, self.trigger_ward_alerts),
            (f"model_at_{self.key}", self.model, self.model_lead, self.model_ward_alerts),
        ):
            out[f"{prefix}_ward_alerts_per_patient_day"] = ward
            out[f"{prefix}_sensitivity"] = op.sensitivity
            out[f"{prefix}_ppv"] = op.precision
            out[f"{prefix}_alerts_per_patient_day"] = op.alerts_per_patient_day
            out[f"{prefix}_episodes_caught"] = lead["detected"]
            out[f"{prefix}_episodes_caught_share"] = lead["detected"] / max(lead["episodes"], 1)
            out[f"{prefix}_lead_minutes_median"] = lead["median_minutes"]
        if self.ward is not None:
            out.update(self.ward.metrics())
        return out


@dataclass(frozen=True)
class WardBudget:
    """A trigger and the model held to as many *ward alerts* — what the scorer's alert
    policy raises from their threshold crossings — on the same rows.

    The row budget of :class:`MatchedComparison` gives both the same number of rows over
    threshold; the policy then turns a trigger's long runs of crossings into few alerts
    and the model's scattered ones into more, so at a row budget the model may raise more
    alerts than the trigger it is compared with. Here the model gets its lowest threshold
    that raises no more ward alerts than the trigger. An alert is a true one if it is
    raised within the horizon before a deterioration (its row's label); an episode is
    caught by such an alert."""

    key: str
    label: str
    threshold: float  # the model's
    patient_days: float
    trigger_alerts: int
    model_alerts: int
    trigger_ppv: float  # share of the ward alerts that are true
    model_ppv: float
    trigger_lead: dict[str, float]
    model_lead: dict[str, float]

    def metrics(self) -> dict[str, float]:
        """``news2_ge5_ward_alert_ppv``, ``model_at_news2_ge5_ward_budget_alert_ppv``…"""
        days = max(self.patient_days, 1e-12)
        out: dict[str, float] = {}
        if np.isfinite(self.threshold):  # inf: the trigger raised no alert
            out[f"model_at_{self.key}_ward_budget_threshold"] = self.threshold
        for prefix, alerts, ppv, lead in (
            (f"{self.key}_ward", self.trigger_alerts, self.trigger_ppv, self.trigger_lead),
            (f"model_at_{self.key}_ward_budget", self.model_alerts, self.model_ppv,
             self.model_lead),
        ):  # fmt: skip
            out[f"{prefix}_alerts_per_patient_day"] = alerts / days
            out[f"{prefix}_alert_ppv"] = ppv
            out[f"{prefix}_episodes_caught"] = lead["detected"]
            out[f"{prefix}_lead_minutes_median"] = lead["median_minutes"]
        return out


def top_k(score: npt.ArrayLike, k: int) -> npt.NDArray[np.bool_]:
    """The ``k`` rows of highest score (ties broken by row order), as a mask."""
    s = np.asarray(score, dtype=np.float64)
    out = np.zeros(len(s), dtype=bool)
    out[np.argsort(-s, kind="stable")[:k]] = True
    return out


@dataclass(frozen=True)
class AlertPolicySettings:
    """The scorer's alert policy (``scorer.quiet_period_minutes``, ``realert_margin``)."""

    quiet_minutes: float
    margin: float


def alerts_raised(
    rows: pd.DataFrame, crossed: npt.ArrayLike, risk: npt.ArrayLike, policy: AlertPolicySettings
) -> npt.NDArray[np.bool_]:
    """The rows of ``rows`` (``patient_id``, ``ts``) on which the scorer's policy raises
    an alert, from per-row threshold crossings: the alerts a ward actually receives."""
    frame = pd.DataFrame(
        {
            "patient_id": rows["patient_id"].to_numpy(),
            "ts": rows["ts"].to_numpy(),
            "risk": np.asarray(risk, dtype=np.float64),
            "alert": np.asarray(crossed, dtype=bool),
        }
    )
    decide = AlertPolicy(pd.Timedelta(minutes=policy.quiet_minutes), policy.margin).decide
    raised: npt.NDArray[np.bool_] = decide(frame).notna().to_numpy(dtype=bool)
    return raised


def ward_alerts(
    rows: pd.DataFrame, crossed: npt.ArrayLike, risk: npt.ArrayLike, policy: AlertPolicySettings
) -> int:
    """How many alerts the scorer's policy raises from ``crossed`` (see :func:`alerts_raised`)."""
    return int(alerts_raised(rows, crossed, risk, policy).sum())


def _ppv(y: npt.NDArray[np.int8], raised: npt.NDArray[np.bool_]) -> float:
    return float(y[raised].mean()) if raised.any() else float("nan")


def ward_budget(
    rows: pd.DataFrame,
    risk: npt.ArrayLike,
    trigger: Trigger,
    patient_days: float,
    policy: AlertPolicySettings,
) -> WardBudget:
    """The trigger and the model at the trigger's ward alerts (:class:`WardBudget`).

    Ward alerts fall as the threshold rises, though not strictly (a higher threshold can
    drop the alert that opened a quiet period, and a later crossing then alerts): the
    threshold is bisected over the distinct risks for the
    lowest one whose alerts do not exceed the trigger's, so the model never gets more."""
    y = rows["label"].to_numpy(dtype=np.int8)
    total = rows["news2_total"].to_numpy(dtype=np.float64)
    fired = trigger.fires(total, rows["news2_red"].to_numpy())
    theirs = alerts_raised(rows, fired, total / 20, policy)
    budget = int(theirs.sum())
    r = np.asarray(risk, dtype=np.float64)
    levels = np.unique(r)[::-1]  # highest first: more levels, more alerts

    def raised_at(i: int) -> npt.NDArray[np.bool_]:
        return alerts_raised(rows, r >= levels[i], r, policy)

    lo, hi = -1, len(levels) - 1  # raised_at(lo) is within budget (none: -1), hi unknown
    mine = np.zeros(len(r), dtype=bool)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        at = raised_at(mid)
        if at.sum() <= budget:
            lo, mine = mid, at
        else:
            hi = mid - 1
    return WardBudget(
        key=trigger.key,
        label=trigger.label,
        threshold=float(levels[lo]) if lo >= 0 else float("inf"),
        patient_days=patient_days,
        trigger_alerts=budget,
        model_alerts=int(mine.sum()),
        trigger_ppv=_ppv(y, theirs),
        model_ppv=_ppv(y, mine),
        trigger_lead=lead_times(rows, theirs),
        model_lead=lead_times(rows, mine),
    )


def matched_comparison(
    rows: pd.DataFrame,
    risk: npt.ArrayLike,
    trigger: Trigger,
    patient_days: float,
    policy: AlertPolicySettings | None = None,
) -> MatchedComparison:
    """A trigger and the model at the trigger's alert count, on ``rows`` (``label``,
    ``patient_id``, ``ts``, ``minutes_to_outcome``, ``news2_total``, ``news2_red``).

    With a ``policy``, also the ward alerts per patient-day each raises after it (for the
    trigger, the re-alert margin is read on NEWS2 / 20: 0.15 is a rise of 3 points)."""
    y = rows["label"].to_numpy(dtype=np.int8)
    fired = trigger.fires(rows["news2_total"].to_numpy(), rows["news2_red"].to_numpy())
    mine = top_k(risk, int(fired.sum()))
    r = np.asarray(risk, dtype=np.float64)
    op_model = operating_point(y, mine.astype(np.float64), 1.0, patient_days)
    cut = float(r[mine].min()) if mine.any() else float("inf")
    # The ward budget replays the trigger's crossings through the policy: its count is
    # the trigger's ward alerts here too.
    ward = None if policy is None else ward_budget(rows, r, trigger, patient_days, policy)
    return MatchedComparison(
        key=trigger.key,
        label=trigger.label,
        trigger=operating_point(y, fired.astype(np.float64), 1.0, patient_days),
        model=dataclasses.replace(op_model, threshold=cut),
        trigger_lead=lead_times(rows, fired),
        model_lead=lead_times(rows, mine),
        trigger_ward_alerts=float("nan") if ward is None else ward.trigger_alerts / patient_days,
        model_ward_alerts=float("nan") if policy is None else ward_alerts(
            rows, mine, r, policy
        ) / patient_days,
        ward=ward,
    )  # fmt: skip


def matched_comparisons(
    rows: pd.DataFrame,
    risk: npt.ArrayLike,
    patient_days: float,
    policy: AlertPolicySettings | None = None,
) -> dict[str, MatchedComparison]:
    """:func:`matched_comparison` for every trigger of the NEWS2 chart."""
    return {k: matched_comparison(rows, risk, t, patient_days, policy) for k, t in TRIGGERS.items()}


def net_benefit(y: npt.ArrayLike, alert: npt.ArrayLike, pt: float) -> float:
    """Net benefit of acting on ``alert`` at threshold probability ``pt``."""
    y_a = np.asarray(y, dtype=np.int8)
    a = np.asarray(alert, dtype=bool)
    n = len(y_a)
    tp = float((a & (y_a == 1)).sum())
    fp = float((a & (y_a == 0)).sum())
    return tp / n - fp / n * pt / (1 - pt)


def decision_curve(
    y: npt.ArrayLike,
    risk: npt.ArrayLike,
    rules: dict[str, npt.ArrayLike],
    thresholds: npt.ArrayLike,
) -> pd.DataFrame:
    """Net benefit of the model (alert when risk ≥ pt), of treating all, and of each
    fixed rule (its alerts do not move with pt), at each threshold probability."""
    y_a = np.asarray(y, dtype=np.int8)
    r = np.asarray(risk, dtype=np.float64)
    everyone = np.ones(len(y_a), dtype=bool)
    out: list[dict[str, float]] = []
    for pt in np.asarray(thresholds, dtype=np.float64):
        row = {
            "threshold": float(pt),
            "model": net_benefit(y_a, r >= pt, pt),
            "treat all": net_benefit(y_a, everyone, pt),
            "treat none": 0.0,
        }
        for name, fired in rules.items():
            row[name] = net_benefit(y_a, fired, pt)
        out.append(row)
    return pd.DataFrame(out)


def calibration_stats(y: npt.ArrayLike, p: npt.ArrayLike) -> dict[str, float]:
    """Slope and intercept (logistic recalibration of logit(p)), calibration-in-the-large
    (observed − mean predicted), Brier and Brier skill (1 − Brier / Brier of the base
    rate). A well-calibrated model has slope ≈ 1, intercept ≈ 0, skill > 0."""
    y_a = np.asarray(y, dtype=np.float64)
    p_a = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    base = float(y_a.mean()) if len(y_a) else float("nan")
    brier = float(np.mean((p_a - y_a) ** 2)) if len(y_a) else float("nan")
    ref = base * (1 - base)
    slope, intercept = recalibration_line(y_a, logit(p_a))
    return {
        "brier": brier,
        "brier_skill": 1 - brier / ref if ref > 0 else float("nan"),
        "calibration_slope": slope,
        "calibration_intercept": intercept,
        "observed_rate": base,
        "mean_predicted": float(p_a.mean()) if len(p_a) else float("nan"),
    }


def recalibration_line(
    y: F, x: F, weights: F | None = None, iters: int = 100
) -> tuple[float, float]:
    """Maximum-likelihood (slope, intercept) of y ~ Bernoulli(sigmoid(a + b·x)), rows
    weighted by ``weights`` (a bootstrap draw), by Newton-Raphson with step halving (the
    likelihood never decreases, so scores piled at 0 or 1 cannot make it diverge); NaN
    when one class is absent."""
    w_row = np.ones_like(y, dtype=np.float64) if weights is None else np.asarray(weights, float)
    present = w_row > 0
    if not present.any() or y[present].min() == y[present].max():
        return float("nan"), float("nan")
    design = np.column_stack([np.ones_like(x), x])

    def loglik(b: F) -> float:
        eta = design @ b
        return float(np.sum(w_row * (y * eta - np.logaddexp(0.0, eta))))

    beta = np.array([0.0, 1.0])  # intercept, slope: the identity
    current = loglik(beta)
    for _ in range(iters):
        eta = np.clip(design @ beta, -35, 35)
        mu = 1 / (1 + np.exp(-eta))
        grad = design.T @ (w_row * (y - mu))
        hess = design.T @ (design * (w_row * mu * (1 - mu) + 1e-12)[:, None]) + 1e-9 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        for _halving in range(30):
            trial = loglik(beta + step)
            if trial >= current - 1e-12:
                break
            step = step / 2
        beta, current = beta + step, max(trial, current)
        if np.abs(step).max() < 1e-10:
            break
    return float(beta[1]), float(beta[0])


def slope_interval(
    y: npt.ArrayLike,
    p: npt.ArrayLike,
    patients: npt.ArrayLike,
    *,
    replicates: int,
    confidence: float,
    seed: int,
) -> tuple[float, float, float]:
    """The calibration slope and its patient-bootstrap interval (estimate, low, high)."""
    y_a = np.asarray(y, dtype=np.float64)
    x = logit(np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0))
    est = recalibration_line(y_a, x)[0]
    rng = np.random.default_rng(seed)
    draws = [recalibration_line(y_a, x, w)[0] for w in bootstrap_weights(patients, replicates, rng)]
    d = np.asarray(draws)
    d = d[np.isfinite(d)]
    alpha = (1 - confidence) / 2
    if not len(d):
        return est, float("nan"), float("nan")
    lo, hi = np.quantile(d, [alpha, 1 - alpha])
    return est, float(lo), float(hi)


def calibration_by_subgroup(rows: pd.DataFrame, p: npt.ArrayLike) -> pd.DataFrame:
    """:func:`calibration_stats` per subgroup (``training.evaluate.subgroup_masks``)."""
    y = rows["label"].to_numpy(dtype=np.int8)
    p_a = np.asarray(p, dtype=np.float64)
    out: list[dict[str, Any]] = []
    for group, value, m in subgroup_masks(rows):
        st = calibration_stats(y[m], p_a[m])
        out.append(
            {
                "group": group,
                "value": value,
                "rows": int(m.sum()),
                "positives": int(y[m].sum()),
                "observed rate": st["observed_rate"],
                "mean risk": st["mean_predicted"],
                "slope": st["calibration_slope"],
                "Brier skill": st["brier_skill"],
            }
        )
    return pd.DataFrame(out)


def comparisons_table(comparisons: dict[str, MatchedComparison]) -> pd.DataFrame:
    """Rows a person reads: each trigger, then the model at the same alert count."""
    out: list[dict[str, Any]] = []
    for c in comparisons.values():
        for who, op, lead, ward in (
            (c.label, c.trigger, c.trigger_lead, c.trigger_ward_alerts),
            (f"model, {c.label}'s budget", c.model, c.model_lead, c.model_ward_alerts),
        ):
            out.append(
                {
                    "rule": who,
                    "alerts / patient-day": op.alerts_per_patient_day,
                    "ward alerts / patient-day": ward,
                    "sensitivity": op.sensitivity,
                    "PPV": op.precision,
                    "episodes caught": f"{int(lead['detected'])} / {int(lead['episodes'])}",
                    "median lead (min)": lead["median_minutes"],
                }
            )
    return pd.DataFrame(out)


def ward_budget_table(comparisons: dict[str, MatchedComparison]) -> pd.DataFrame:
    """Each trigger, then the model at as many ward alerts (empty without a policy)."""
    out: list[dict[str, Any]] = []
    for c in comparisons.values():
        w = c.ward
        if w is None:
            continue
        for who, alerts, ppv, lead in (
            (w.label, w.trigger_alerts, w.trigger_ppv, w.trigger_lead),
            (f"model, {w.label}'s ward alerts", w.model_alerts, w.model_ppv, w.model_lead),
        ):
            out.append(
                {
                    "rule": who,
                    "ward alerts / patient-day": alerts / max(w.patient_days, 1e-12),
                    "alert PPV": ppv,
                    "episodes caught": f"{int(lead['detected'])} / {int(lead['episodes'])}",
                    "median lead (min)": lead["median_minutes"],
                }
            )
    return pd.DataFrame(out)
