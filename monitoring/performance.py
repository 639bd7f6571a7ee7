"""Realized performance: how the stored predictions did, once outcomes have landed.

A prediction at time *t* is labelled exactly as a training row is
(:func:`features.labels.make_labels`): positive when the patient's first deterioration
follows within the horizon, negative when it does not; either only once the whole horizon
has passed (until then censored, not judged, even if the outcome already landed), and
excluded after the outcome.

Alert quality is judged on the alerts actually raised (after the quiet-period policy):
an alert is *true* when a deterioration follows within the horizon; an episode is
*caught* when at least one alert preceded it within the horizon.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

from features.labels import STATUS_LABELLED, make_labels
from stack.settings import PerformanceSettings


@dataclass(frozen=True)
class Performance:
    """Performance of one set of scores on the labelled rows of a window."""

    source: str  # realized (stored predictions) | backtest (model re-scoring batch features)
    rows: int
    labelled: int
    positive: int
    judged: bool  # enough labelled rows and positives to judge
    roc_auc: float | None
    pr_auc: float | None
    prevalence: float | None
    alerts: int | None = None
    alert_precision: float | None = None
    episodes: int | None = None
    alert_recall: float | None = None
    alerts_per_patient_day: float | None = None
    served_as: str | None = None  # realized: champion, or shadow (no alerts of its own)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def score_performance(
    scored: pd.DataFrame,
    outcomes: pd.DataFrame,
    *,
    horizon: pd.Timedelta,
    observed_until: pd.Timestamp,
    cfg: PerformanceSettings,
    source: str,
) -> Performance:
    """ROC-AUC and PR-AUC of ``risk`` on the rows whose label is known.

    Args:
        scored: ``patient_id``, ``ts``, ``risk``.
        outcomes: ``patient_id``, ``ts``, ``kind`` (landed deterioration outcomes).
        observed_until: outcomes are known up to here; later horizons are censored.
    """
    labels = make_labels(scored, outcomes, horizon=horizon, observed_until=observed_until)
    known = (labels["label_status"] == STATUS_LABELLED).to_numpy()
    y = labels.loc[known, "label"].to_numpy(dtype=np.int8)
    p = scored.loc[known, "risk"].to_numpy(dtype=np.float64)
    positive = int(y.sum())
    judged = len(y) >= cfg.min_labelled and positive >= cfg.min_positive
    both = 0 < positive < len(y)
    return Performance(
        source=source,
        rows=len(scored),
        labelled=len(y),
        positive=positive,
        judged=judged,
        roc_auc=float(roc_auc_score(y, p)) if both else None,
        pr_auc=float(average_precision_score(y, p)) if both else None,
        prevalence=positive / len(y) if len(y) else None,
    )


def alert_quality(
    alerts: pd.DataFrame,
    outcomes: pd.DataFrame,
    scored: pd.DataFrame,
    *,
    horizon: pd.Timedelta,
    observed_until: pd.Timestamp,
) -> dict[str, Any]:
    """Precision and episode recall of the alerts raised, and their rate.

    Args:
        alerts: ``patient_id``, ``ts`` of each alert raised.
        outcomes: landed outcomes (first per patient counts).
        scored: the predictions of the window (``patient_id``, ``ts``): who was watched
            and for how long (patient-days), and which episodes were in view.
    """
    first = outcomes.sort_values("ts").drop_duplicates("patient_id")
    watched = scored.groupby("patient_id")["ts"].agg(["min", "max"])
    patient_days = float(((watched["max"] - watched["min"]).dt.total_seconds() / 86400).sum())
    out: dict[str, Any] = {
        "alerts": len(alerts),
        "alerts_per_patient_day": len(alerts) / patient_days if patient_days > 0 else None,
    }
    if len(alerts):
        lab = make_labels(alerts, first, horizon=horizon, observed_until=observed_until)
        known = lab["label_status"] == STATUS_LABELLED
        out["alert_precision"] = float(lab.loc[known, "label"].mean()) if known.any() else None
    else:
        out["alert_precision"] = None
    # Episodes in view: an outcome of a watched patient, after their first prediction.
    ep = first.join(watched, on="patient_id", how="inner")
    ep = ep[(ep["ts"] > ep["min"]) & (ep["ts"] <= ep["max"] + horizon)]
    caught = 0
    if len(ep) and len(alerts):
        a = alerts[["patient_id", "ts"]].rename(columns={"ts": "alert_ts"})
        m = ep[["patient_id", "ts"]].merge(a, on="patient_id")
        hit = (m["alert_ts"] < m["ts"]) & (m["alert_ts"] >= m["ts"] - horizon)
        caught = int(m.loc[hit, "patient_id"].nunique())
    out["episodes"] = len(ep)
    out["alert_recall"] = caught / len(ep) if len(ep) else None
    return out


def realized(
    predictions: pd.DataFrame,
    alerts: pd.DataFrame,
    outcomes: pd.DataFrame,
    *,
    horizon: pd.Timedelta,
    observed_until: pd.Timestamp,
    cfg: PerformanceSettings,
    served_as: str | None = "champion",
) -> Performance:
    """Performance of what was served: stored predictions and the alerts raised.

    ``served_as="shadow"``: the predictions of a challenger in shadow, which raises no
    alerts, so alert quality is not judged (None), rather than judged as zero alerts.
    """
    base = score_performance(
        predictions,
        outcomes,
        horizon=horizon,
        observed_until=observed_until,
        cfg=cfg,
        source="realized",
    )
    base = replace(base, served_as=served_as)
    if predictions.empty or served_as == "shadow":
        return base
    quality = alert_quality(
        alerts, outcomes, predictions, horizon=horizon, observed_until=observed_until
    )
    return Performance(**{**base.to_dict(), **quality})


def below_floor(perf: Performance, cfg: PerformanceSettings) -> list[str]:
    """Reasons the performance is below its floors (empty when fine or not judged)."""
    if not perf.judged:
        return []
    reasons = []
    if perf.roc_auc is not None and perf.roc_auc < cfg.roc_auc_floor:
        reasons.append(f"{perf.source} ROC-AUC {perf.roc_auc:.3f} < floor {cfg.roc_auc_floor:.2f}")
    if cfg.pr_auc_floor is not None and perf.pr_auc is not None and perf.pr_auc < cfg.pr_auc_floor:
        reasons.append(f"{perf.source} PR-AUC {perf.pr_auc:.3f} < floor {cfg.pr_auc_floor:.2f}")
    return reasons
