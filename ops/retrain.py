"""``make retrain-if-needed``: monitoring → (trigger) → training → gate → promotion.

The service picks up a promoted champion by itself (registry watch, hot swap), so the
loop ends at the registry. Each trigger row in ``retraining_triggers`` records what
became of it: ``skipped`` (cool-down), ``training``, then ``promoted``, ``rejected`` (the
gate kept the champion) or ``failed`` (with the error).

Retraining uses a sliding window: the last ``monitoring.retrain.window_days`` of landed
data up to the monitoring window's end, so recent production data with its landed
outcomes dominates and the old regime ages out.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from monitoring.job import MonitoringSummary, run_monitoring
from stack import db
from stack.settings import Settings
from training.job import TrainSummary, run_training
from training.promotion import PromotionResult, run_promote

log = logging.getLogger("vigil.retrain")


@dataclass
class RetrainOutcome:
    monitoring: MonitoringSummary
    action: str  # none | skipped | promoted | rejected
    detail: str = ""
    training: TrainSummary | None = None
    promotion: PromotionResult | None = None
    since: pd.Timestamp | None = None
    until: pd.Timestamp | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "detail": self.detail,
            "monitoring": self.monitoring.to_dict(),
            "window": [str(self.since), str(self.until)] if self.since is not None else None,
            "new_version": self.training.model_version if self.training else None,
            "promoted": self.promotion.promoted if self.promotion else None,
        }


def _set(settings: Settings, trigger_id: int | None, status: str, **cols: Any) -> None:
    if trigger_id is None:
        return
    names = ["status", "updated_at", *cols]
    values = [status, datetime.now(UTC), *cols.values()]
    assign = ", ".join(f"{n} = %s" for n in names)
    with db.transaction(settings) as conn:
        conn.execute(
            f"UPDATE retraining_triggers SET {assign} WHERE trigger_id = %s",
            (*values, trigger_id),
        )


def last_retraining_end(settings: Settings) -> pd.Timestamp | None:
    """Data time (window end) of the latest trigger that led to a training run."""
    with db.connect(settings) as conn:
        row = conn.execute(
            "SELECT max(m.window_end) FROM retraining_triggers t "
            "JOIN monitoring_runs m ON m.run_id = t.monitoring_run_id "
            "WHERE t.status IN ('training', 'promoted', 'rejected')"
        ).fetchone()
    return pd.Timestamp(row[0]) if row and row[0] is not None else None


def retrain_if_needed(settings: Settings, *, until: datetime | None = None) -> RetrainOutcome:
    """Judge the champion; retrain and gate when a trigger fires (outside the cool-down).

    Raises:
        monitoring.job.MonitoringError: nothing to judge (no champion or no data).
        training.job.TrainingDataError: the window holds too little to train on; the
            trigger row says ``failed`` with the message.
    """
    summary = run_monitoring(settings, until=until)
    if not summary.triggered:
        return RetrainOutcome(summary, "none", "no trigger")
    cfg = settings.monitoring.retrain
    end = summary.window_end
    last = last_retraining_end(settings)
    if last is not None and end - last < pd.Timedelta(hours=cfg.cooldown_hours):
        detail = (
            f"cool-down: the last retraining covered data up to {last}, "
            f"less than {cfg.cooldown_hours:g} h before {end}"
        )
        _set(settings, summary.trigger_id, "skipped", detail=detail)
        return RetrainOutcome(summary, "skipped", detail)

    since = end - pd.Timedelta(days=cfg.window_days)
    window = settings.training.model_copy(
        update={"since": since.to_pydatetime(), "until": end.to_pydatetime()}
    )
    tsettings = settings.model_copy(update={"training": window})
    _set(settings, summary.trigger_id, "training")
    log.info("retraining", extra={"stage": "retrain", "trigger_id": summary.trigger_id,
                                  "since": str(since), "until": str(end)})  # fmt: skip
    try:
        trained = run_training(tsettings)
        _set(settings, summary.trigger_id, "training", training_run_id=trained.run_id,
             new_version=trained.model_version)  # fmt: skip
        promotion = run_promote(tsettings)
    except Exception as exc:
        _set(settings, summary.trigger_id, "failed", detail=f"{type(exc).__name__}: {exc}")
        raise
    status = "promoted" if promotion.promoted else "rejected"
    detail = "; ".join(promotion.decision.reasons)
    _set(settings, summary.trigger_id, status, detail=detail[:4000])
    return RetrainOutcome(summary, status, detail, trained, promotion, since, end)
