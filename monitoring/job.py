"""The monitoring run (``make drift``): drift, realized performance, and the trigger.

One run judges the current ``@champion`` on the last ``monitoring.window_hours`` of data:

1. **Reference**: the sample logged with the champion's training run
   (:data:`stack.contracts.REFERENCE_ARTIFACT`: features and out-of-sample risk).
2. **Current**: the window's batch feature rows from the lake (equal to the online
   features the scorer computed, by the parity test) and the champion version's stored
   predictions from PostgreSQL — as champion, or, for a version promoted within the
   window, the shadow predictions it made on the same live traffic before.
3. **Drift** (Evidently, :mod:`monitoring.drift`) of every feature and of the risk score —
   the served risk when predictions exist, else the champion re-scoring the window.
4. **Performance** once outcomes have landed: *realized* (stored predictions and the
   alerts raised) and *backtest* (the champion re-scoring the window's batch features;
   the like-for-like figure for comparing models on the same rows).
5. **Trigger** when the drift share, prediction drift or a performance floor says so.

Outputs: Evidently HTML + JSON and ``summary.json`` under ``reports/monitoring/<run>/``,
the same logged to an MLflow run tagged with the champion's version (and the version
tagged back with the run), a ``monitoring_runs`` row, a ``retraining_triggers`` row when
triggered, and Prometheus gauges in the textfile collector.

The window's "now" is the latest feature time landed, not the wall clock: the data may
be a backfill (the simulator starts in January 2026), and a window with nothing in it
says nothing.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.spec import FEATURE_NAMES, FEATURE_SET_VERSION, FEATURES_ZONE
from monitoring.drift import RISK, DriftResult, detect_drift, prediction_drift
from monitoring.performance import Performance, below_floor, realized, score_performance
from stack import db
from stack.catalog import RAW_OUTCOMES, REFERENCE_ARTIFACT
from stack.lake import Lake
from stack.metrics import record_stage
from stack.registry import CHAMPION, ModelRef, ModelRegistry, RegistryError
from stack.settings import Settings
from stack.tracking import Tracking

log = logging.getLogger("vigil.monitoring")


class MonitoringError(RuntimeError):
    """The run cannot judge anything: no champion, no reference, or no current data."""


@dataclass
class MonitoringSummary:
    run_id: str
    model_name: str
    model_version: str
    window_start: pd.Timestamp
    window_end: pd.Timestamp
    drift: DriftResult
    prediction_source: str
    realized: Performance
    backtest: Performance
    reasons: list[str]
    report_dir: Path
    trigger_id: int | None = None
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def triggered(self) -> bool:
        return bool(self.reasons)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "model": f"{self.model_name} v{self.model_version}",
            "window": [str(self.window_start), str(self.window_end)],
            "drift": self.drift.to_dict(),
            "prediction_source": self.prediction_source,
            "realized": self.realized.to_dict(),
            "backtest": self.backtest.to_dict(),
            "triggered": self.triggered,
            "reasons": self.reasons,
            "trigger_id": self.trigger_id,
            "report_dir": str(self.report_dir),
            "seconds": round(self.seconds, 2),
        }


# ----------------------------------------------------------------------------- inputs


def champion(settings: Settings) -> ModelRef:
    """The version ``@champion`` points to.

    Raises:
        MonitoringError: no registered model or no champion yet.
    """
    registry = ModelRegistry(settings)
    ref = registry.by_alias(CHAMPION)
    if ref is None:
        raise MonitoringError(
            f"{registry.name} has no @{CHAMPION} to monitor: run `make train` and `make promote`"
        )
    return ref


def reference_sample(settings: Settings, champ: ModelRef) -> pd.DataFrame:
    """The champion's training sample with out-of-sample risk.

    Raises:
        MonitoringError: the training run logged no reference (trained before monitoring
            existed): retrain to get one.
    """
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = ModelRegistry(settings).run_artifact(champ.run_id, REFERENCE_ARTIFACT, Path(tmp))
        except RegistryError as exc:
            raise MonitoringError(
                f"{champ.label} (run {champ.run_id}) has no {REFERENCE_ARTIFACT}: it was "
                "trained before drift monitoring; retrain it"
            ) from exc
        return pd.read_parquet(path)


def _hour_of(rel: str) -> pd.Timestamp | None:
    parts = dict(p.split("=", 1) for p in rel.split("/") if "=" in p)
    if "date" not in parts or "hour" not in parts:
        return None
    return pd.Timestamp(f"{parts['date']}T{parts['hour']}:00:00Z")


def window_features(
    lake: Lake, start: pd.Timestamp | None, end: pd.Timestamp | None
) -> pd.DataFrame:
    """Feature rows with ``start <= ts < end`` (hour partitions outside are not read)."""
    files = []
    for rel in lake.files(FEATURES_ZONE):
        hour = _hour_of(rel)
        if hour is not None and start is not None and hour + pd.Timedelta(hours=1) <= start:
            continue
        if hour is not None and end is not None and hour > end:
            continue
        files.append(rel)
    if not files:
        return pd.DataFrame(columns=["patient_id", "ts", *FEATURE_NAMES])
    frame = pd.concat([lake.read_table(f).to_pandas() for f in files], ignore_index=True)
    keep = pd.Series(True, index=frame.index)
    if start is not None:
        keep &= frame["ts"] >= start
    if end is not None:
        keep &= frame["ts"] < end
    return frame[keep.to_numpy()].sort_values(["patient_id", "ts"]).reset_index(drop=True)


def latest_feature_time(lake: Lake) -> pd.Timestamp:
    hours = [h for h in (_hour_of(f) for f in lake.files(FEATURES_ZONE)) if h is not None]
    if not hours:
        raise MonitoringError(
            f"no features of {FEATURE_SET_VERSION} in the lake at {lake.uri}: "
            "run `make features` first"
        )
    last = window_features(lake, max(hours), None)
    return pd.Timestamp(last["ts"].max()) + pd.Timedelta(minutes=1)


def landed_outcomes(lake: Lake) -> pd.DataFrame:
    table = lake.read_table(RAW_OUTCOMES)
    if not table.num_rows:
        return pd.DataFrame({"patient_id": [], "ts": pd.Series([], dtype="datetime64[ns, UTC]"),
                             "kind": []})  # fmt: skip
    return table.select(["patient_id", "ts", "kind"]).to_pandas()


def stored_predictions(
    settings: Settings, champ: ModelRef, start: pd.Timestamp, end: pd.Timestamp
) -> tuple[pd.DataFrame, pd.DataFrame, str | None]:
    """A model version's stored predictions in the window, the alerts it raised, its role.

    The role is ``champion`` when the version served as champion in the window. A version
    that only ran in shadow there (a challenger scored on live traffic before its
    promotion) has its ``shadow`` predictions judged instead; it raised no alerts. None:
    the version scored nothing in the window.
    """
    with db.connect(settings) as conn:
        cur = conn.execute(
            "SELECT patient_id, ts, risk, role FROM predictions WHERE status = 'scored' "
            "AND model_name = %s AND model_version = %s AND ts >= %s AND ts < %s "
            "ORDER BY patient_id, ts",
            (champ.name, champ.version, start, end),
        )
        rows = pd.DataFrame(cur.fetchall(), columns=["patient_id", "ts", "risk", "role"])
        cur = conn.execute(
            "SELECT patient_id, ts FROM alerts WHERE model_name = %s AND model_version = %s "
            "AND ts >= %s AND ts < %s",
            (champ.name, champ.version, start, end),
        )
        alerts = pd.DataFrame(cur.fetchall(), columns=["patient_id", "ts"])
    role = None if rows.empty else "champion" if (rows["role"] == "champion").any() else "shadow"
    preds = rows[rows["role"] == role].drop(columns="role").reset_index(drop=True)
    for frame in (preds, alerts):
        frame["ts"] = pd.to_datetime(frame["ts"], utc=True, cache=False)
    preds["risk"] = preds["risk"].astype(np.float64)
    return preds, alerts, role


def backtest_risk(settings: Settings, champ: ModelRef, rows: pd.DataFrame) -> np.ndarray:
    """The champion's calibrated risk for batch feature rows (the same vectors the scorer
    built, the same map it applies)."""
    model = ModelRegistry(settings).load(champ)
    if rows.empty:
        return np.empty(0)
    return np.asarray(model.risk(rows[list(FEATURE_NAMES)]), dtype=np.float64)


# ----------------------------------------------------------------------------- decision


def decide(drift: DriftResult, perf: list[Performance], settings: Settings) -> list[str]:
    """Why to retrain, if at all (empty: no trigger).

    Feature drift: a share of tested columns at or above ``trigger_share`` drifted, *and*
    the most drifted one at ``trigger_severity`` times its threshold or more — breadth and
    strength. A chance ward (a few more COPD patients, say) moves a family of correlated
    columns just past their thresholds; a real change moves at least one far past them
    (``bench/bench_drift.py`` measures both). Drift of the risk score (when enabled) at
    ``trigger_severity``; realized performance (or, without enough stored predictions,
    the backtest) below a floor.
    """
    cfg = settings.monitoring
    strong = cfg.drift.trigger_severity
    reasons: list[str] = []
    drifted = drift.drifted
    if drift.tested and drift.share >= cfg.drift.trigger_share and drifted[0].severity >= strong:
        top = ", ".join(c.column for c in drifted[:5])
        reasons.append(
            f"feature drift: {len(drifted)}/{drift.tested} columns "
            f"({drift.share:.0%} >= {cfg.drift.trigger_share:.0%}), most: {top} "
            f"({drifted[0].severity:.1f}x its threshold >= {strong:g}x)"
        )
    p = drift.prediction
    if cfg.drift.prediction_trigger and p is not None and p.drifted and p.severity >= strong:
        reasons.append(
            f"prediction drift: risk {p.method} {p.score:.3f} >= {strong:g} x {p.threshold:.2f} "
            f"(mean {p.reference_mean:.3f} -> {p.current_mean:.3f})"
        )
    judged = [x for x in perf if x.judged]
    if judged:
        reasons.extend(below_floor(judged[0], cfg.performance))
    return reasons


# ----------------------------------------------------------------------------- the run


def run_monitoring(
    settings: Settings,
    *,
    until: datetime | None = None,
    record_trigger: bool = True,
) -> MonitoringSummary:
    """Judge the champion on the current window; see the module docstring.

    Args:
        until: end of the window (exclusive); default: the latest feature time landed.
        record_trigger: write a ``retraining_triggers`` row when triggered.

    Raises:
        MonitoringError: no champion, no reference sample, or no features in the window.
    """
    t0 = time.perf_counter()
    cfg = settings.monitoring
    lake = Lake(settings.lake.root)
    champ = champion(settings)
    reference = reference_sample(settings, champ)
    end = pd.Timestamp(until) if until is not None else latest_feature_time(lake)
    if end.tzinfo is None:
        end = end.tz_localize("UTC")
    start = end - pd.Timedelta(hours=cfg.window_hours)
    current = window_features(lake, start, end)
    if current.empty:
        raise MonitoringError(f"no feature rows between {start} and {end}")
    db.migrate(settings)
    preds, alerts, served_as = stored_predictions(settings, champ, start, end)
    current["risk"] = backtest_risk(settings, champ, current)

    # Prediction drift on what was served when there is enough of it, else the backtest.
    source = "served" if len(preds) >= cfg.performance.min_labelled else "backtest"
    drift, snapshot = detect_drift(reference, current, cfg.drift)
    scored = preds if source == "served" else current
    pred = prediction_drift(reference[RISK], scored[RISK], cfg.drift)
    drift = DriftResult(
        columns=drift.columns,
        skipped=drift.skipped,
        prediction=pred,
        reference_rows=drift.reference_rows,
        current_rows=drift.current_rows,
    )

    outcomes = landed_outcomes(lake)
    horizon = pd.Timedelta(hours=settings.features.horizon_hours)
    observed_until = end
    real = realized(
        preds, alerts, outcomes, horizon=horizon, observed_until=observed_until,
        cfg=cfg.performance, served_as=served_as,
    )  # fmt: skip
    back = score_performance(
        current[["patient_id", "ts", "risk"]], outcomes, horizon=horizon,
        observed_until=observed_until, cfg=cfg.performance, source="backtest",
    )  # fmt: skip
    reasons = decide(drift, [real, back], settings)

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    report_dir = settings.resolve(cfg.reports_dir) / f"{stamp}-v{champ.version}"
    report_dir.mkdir(parents=True, exist_ok=True)
    snapshot.save_json(str(report_dir / "drift.json"))

    summary = MonitoringSummary(
        run_id="",
        model_name=champ.name,
        model_version=champ.version,
        window_start=start,
        window_end=end,
        drift=drift,
        prediction_source=source,
        realized=real,
        backtest=back,
        reasons=reasons,
        report_dir=report_dir,
    )
    _drift_page(snapshot, summary, settings)
    summary.run_id = _log_to_mlflow(settings, champ, summary)
    summary.seconds = time.perf_counter() - t0
    (report_dir / "summary.json").write_text(json.dumps(summary.to_dict(), indent=1, default=str))
    _store(settings, summary, record_trigger=record_trigger)
    _metrics(settings, summary)
    log.info("monitoring done", extra={"stage": "monitoring", "run_id": summary.run_id,
                                       "model_version": champ.version,
                                       "drift_share": round(drift.share, 4),
                                       "triggered": summary.triggered})  # fmt: skip
    return summary


def _drift_page(snapshot: Any, s: MonitoringSummary, settings: Settings) -> None:
    """``drift.html``: Evidently's report under a header with the model, the windows and
    Vigil's own verdict (what ``make drift`` prints and the trigger acts on)."""
    from monitoring.report import drift_page  # the renderer imports this module's types

    path = s.report_dir / "drift.html"
    snapshot.save_html(str(path))
    path.write_text(drift_page(path.read_text(), s, settings))


def _log_to_mlflow(settings: Settings, champ: ModelRef, s: MonitoringSummary) -> str:
    name = f"drift-v{champ.version}-{s.window_end:%Y%m%dT%H%M}"
    tags = {
        "vigil.kind": "monitoring",
        "model_name": champ.name,
        "model_version": champ.version,
        "model_run_id": champ.run_id,
        "window_start": str(s.window_start),
        "window_end": str(s.window_end),
        "triggered": str(s.triggered).lower(),
        "reasons": "; ".join(s.reasons)[:4000] or "none",
        "prediction_source": s.prediction_source,
    }
    with Tracking(settings, settings.monitoring.experiment).run(name, tags=tags) as run:
        metrics: dict[str, float] = {
            "drift_share": s.drift.share,
            "drifted_columns": float(len(s.drift.drifted)),
            "tested_columns": float(s.drift.tested),
            "current_rows": float(s.drift.current_rows),
        }
        if s.drift.prediction is not None:
            metrics["prediction_drift_score"] = s.drift.prediction.score
        for perf in (s.realized, s.backtest):
            for key in ("roc_auc", "pr_auc", "alert_precision", "alert_recall",
                        "alerts_per_patient_day", "labelled", "positive"):  # fmt: skip
                value = getattr(perf, key)
                if value is not None:
                    metrics[f"{perf.source}_{key}"] = float(value)
        run.metrics(metrics)
        run.artifacts(s.report_dir, "monitoring")
    # The version points back at its latest judgement (visible in the registry UI).
    ModelRegistry(settings).tag(
        champ.version,
        {"last_monitoring_run": run.run_id, "last_drift_share": f"{s.drift.share:.4f}"},
    )
    return run.run_id


def _store(settings: Settings, s: MonitoringSummary, *, record_trigger: bool) -> None:
    now = datetime.now(UTC)
    p = s.drift.prediction
    with db.transaction(settings) as conn:
        conn.execute(
            "INSERT INTO monitoring_runs (run_id, model_name, model_version, window_start, "
            "window_end, reference_rows, current_rows, tested_columns, drifted_columns, "
            "drift_share, prediction_drift_score, prediction_drifted, prediction_source, "
            "realized, backtest, triggered, reasons, report_dir, created_at) "
            "VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)",
            (
                s.run_id, s.model_name, s.model_version, s.window_start, s.window_end,
                s.drift.reference_rows, s.drift.current_rows, s.drift.tested,
                [c.column for c in s.drift.drifted], s.drift.share,
                p.score if p else None, p.drifted if p else None, s.prediction_source,
                json.dumps(s.realized.to_dict()), json.dumps(s.backtest.to_dict()),
                s.triggered, s.reasons, str(s.report_dir), now,
            ),
        )  # fmt: skip
        if s.triggered and record_trigger:
            row = conn.execute(
                "INSERT INTO retraining_triggers (monitoring_run_id, model_name, model_version, "
                "reasons, status, created_at, updated_at) "
                "VALUES (%s,%s,%s,%s,'pending',%s,%s) RETURNING trigger_id",
                (s.run_id, s.model_name, s.model_version, s.reasons, now, now),
            ).fetchone()
            s.trigger_id = int(row[0]) if row else None


def _metrics(settings: Settings, s: MonitoringSummary) -> None:
    gauges: dict[str, tuple[str, float]] = {
        "vigil_drift_share": ("Share of tested feature columns drifted", s.drift.share),
        "vigil_drift_columns": ("Feature columns drifted", float(len(s.drift.drifted))),
        "vigil_retraining_triggered": (
            "1 if the last run triggered retraining",
            float(s.triggered),
        ),
    }
    if s.drift.prediction is not None:
        gauges["vigil_prediction_drift_score"] = (
            "Drift score of the risk score", s.drift.prediction.score,
        )  # fmt: skip
    names = {"realized": "vigil_realized_roc_auc", "backtest": "vigil_backtest_roc_auc"}
    for perf in (s.realized, s.backtest):
        if perf.roc_auc is not None:
            gauges[names[perf.source]] = (
                f"ROC-AUC of the champion ({perf.source}) on the window", perf.roc_auc,
            )  # fmt: skip
    record_stage(
        settings, "monitoring", seconds=s.seconds, gauges=gauges,
        labels={"model_version": s.model_version},
    )  # fmt: skip
