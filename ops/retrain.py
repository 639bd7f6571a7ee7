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

from monitoring.job import MonitoringSummary, latest_feature_time, run_monitoring
from stack import db
from stack.lake import Lake
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


def cooldown_detail(
    last: pd.Timestamp | None, end: pd.Timestamp, cooldown_hours: float
) -> str | None:
    """Why a trigger at data time ``end`` waits, or None when it may retrain.

    The cool-down is measured in data time (window ends), not the wall clock, so a
    backfill or a replay behaves like live traffic.
    """
    if last is None or end - last >= pd.Timedelta(hours=cooldown_hours):
        return None
    return (
        f"cool-down: the last retraining covered data up to {last}, "
        f"less than {cooldown_hours:g} h before {end}"
    )


def hold_for_cooldown(settings: Settings, summary: MonitoringSummary) -> str | None:
    """Mark a fresh trigger ``skipped`` when it falls in the cool-down; returns why."""
    if not summary.triggered:
        return None
    last = last_retraining_end(settings)
    detail = cooldown_detail(last, summary.window_end, settings.monitoring.retrain.cooldown_hours)
    if detail is not None:
        _set(settings, summary.trigger_id, "skipped", detail=detail)
        log.info("trigger held", extra={"stage": "retrain", "trigger_id": summary.trigger_id,
                                        "reason": detail})  # fmt: skip
    return detail


def window_settings(settings: Settings, end: pd.Timestamp) -> Settings:
    """``settings`` training on the sliding window that ends at ``end``."""
    since = end - pd.Timedelta(days=settings.monitoring.retrain.window_days)
    window = settings.training.model_copy(
        update={"since": since.to_pydatetime(), "until": end.to_pydatetime()}
    )
    return settings.model_copy(update={"training": window})


def _latest_trigger(settings: Settings, status: str) -> int | None:
    db.migrate(settings)
    with db.connect(settings) as conn:
        row = conn.execute(
            "SELECT max(trigger_id) FROM retraining_triggers WHERE status = %s", (status,)
        ).fetchone()
    return int(row[0]) if row and row[0] is not None else None


def pending_trigger(settings: Settings) -> int | None:
    """The latest trigger still ``pending`` (recorded by monitoring, not yet acted on)."""
    return _latest_trigger(settings, "pending")


def pending_trigger_in_training(settings: Settings) -> int | None:
    """The latest trigger whose retraining ran (status ``training``) and awaits the gate."""
    return _latest_trigger(settings, "training")


def train_on_window(
    settings: Settings, *, trigger_id: int | None = None, end: pd.Timestamp | None = None
) -> TrainSummary:
    """Train a challenger on the sliding window (ending at the latest feature time).

    Marks ``trigger_id`` (when given) ``training`` with the run id, or ``failed``.
    """
    end = end if end is not None else latest_feature_time(Lake(settings.lake.root))
    _set(settings, trigger_id, "training")
    log.info("retraining", extra={"stage": "retrain", "trigger_id": trigger_id,
                                  "until": str(end)})  # fmt: skip
    try:
        trained = run_training(window_settings(settings, end))
    except Exception as exc:
        _set(settings, trigger_id, "failed", detail=f"{type(exc).__name__}: {exc}")
        raise
    _set(settings, trigger_id, "training", training_run_id=trained.run_id,
         new_version=trained.model_version)  # fmt: skip
    return trained


def deploy(settings: Settings, *, trigger_id: int | None = None) -> PromotionResult:
    """Gate the challenger and promote it if it passes; closes ``trigger_id`` with the verdict."""
    try:
        promotion = run_promote(settings)
    except Exception as exc:
        _set(settings, trigger_id, "failed", detail=f"{type(exc).__name__}: {exc}")
        raise
    status = "promoted" if promotion.promoted else "rejected"
    _set(settings, trigger_id, status, detail="; ".join(promotion.decision.reasons)[:4000])
    return promotion


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
    held = hold_for_cooldown(settings, summary)
    if held is not None:
        return RetrainOutcome(summary, "skipped", held)

    trained = train_on_window(settings, trigger_id=summary.trigger_id, end=end)
    promotion = deploy(window_settings(settings, end), trigger_id=summary.trigger_id)
    status = "promoted" if promotion.promoted else "rejected"
    since = end - pd.Timedelta(days=cfg.window_days)
    detail = "; ".join(promotion.decision.reasons)
    return RetrainOutcome(summary, status, detail, trained, promotion, since, end)
