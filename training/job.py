"""``make train``: tune every family, pick by cross-validation, register the challenger.

Named steps, each with typed inputs and outputs (:func:`prepare` → :func:`tune_families` →
:func:`choose` → :func:`evaluate` → :func:`write_report` → :func:`register`), logged
through ``stack.tracking`` and registered through ``stack.registry``. One MLflow parent
run per job, in the experiment ``<prefix>-<training.experiment>``:

- a nested run per family (its Optuna study), with a nested run per trial (params,
  per-fold and mean ± s.d. cross-validated PR-AUC and ROC-AUC, pruned or complete);
- on the parent: the chosen family and hyperparameters, the operating threshold chosen on
  out-of-fold (validation) predictions for the configured alert budget, the held-out test
  metrics at that threshold side by side with NEWS2 (with patient-bootstrap intervals),
  lineage (data range, row counts, feature-set version, ETL validation runs, git commit),
  figures, the split, the model card, and the model itself (signature, input example)
  registered as a new version of ``training.registered_model`` with alias ``challenger``.

Model selection reads only the cross-validation folds; the held-out test patients are
scored once, by the chosen model, for the record and for the promotion gate.
"""

from __future__ import annotations

import json
import logging
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import typer

from features.news2 import TRIGGERS
from features.spec import FEATURE_NAMES, FEATURE_SET_VERSION, FEATURES_ZONE, LABELS_FILE, digest
from stack.calibration import METADATA_KEY as CALIBRATION_METADATA
from stack.catalog import REFERENCE_ARTIFACT
from stack.lake import Lake
from stack.logs import configure_logging
from stack.metrics import record_stage
from stack.registry import CHALLENGER, ModelRef, ModelRegistry
from stack.settings import REPO_ROOT, Family, Settings, TrainingSettings, load_settings
from stack.tracking import TrackedRun, Tracking
from training import plots
from training.calibrate import CalibrationChoice, choose_calibration
from training.card import ModelCard, render_card
from training.clinical import (
    AlertPolicySettings,
    MatchedComparison,
    calibration_by_subgroup,
    calibration_stats,
    decision_curve,
    matched_comparisons,
    ward_alerts,
)
from training.dataset import PatientSplit, fresh_rows, labelled_rows, split_by_patient
from training.evaluate import compare, lead_times, metrics_at, subgroup_metrics
from training.models import build, importances, pip_requirements, risk
from training.threshold import OperatingPoint, choose_threshold, operating_point
from training.tune import StudyResult, TrialRecord, fold_index, tune_family, tuning_rows

log = logging.getLogger("vigil.training")
# Threshold probabilities of the decision curve: the range in which a ward would act on a
# deterioration risk (a review at a few per cent, an escalation at tens of per cent).
DECISION_THRESHOLDS = np.round(np.arange(0.01, 0.51, 0.01), 2)


class TrainingDataError(RuntimeError):
    """The lake holds no usable training data for the configured range."""


@dataclass
class TrainSummary:
    run_id: str
    experiment: str
    family: str
    params: dict[str, Any]
    model_version: str
    threshold: float
    test: dict[str, float]
    news2: dict[str, float]
    cv: dict[str, float]
    rows: dict[str, int]
    seconds: float
    studies: dict[str, dict[str, Any]] = field(default_factory=dict)
    card_path: str = ""

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


# --------------------------------------------------------------------------- data
def scored_rows(settings: Settings, rows: pd.DataFrame) -> pd.DataFrame:
    """The labelled rows ``training.rows`` trains and judges on (``fresh``: those the
    scorer scores, :func:`training.dataset.fresh_rows`; ``all``: every grid row)."""
    if settings.training.rows == "fresh":
        return fresh_rows(rows, settings.features.cadence_minutes)
    return rows


def load_rows(settings: Settings) -> pd.DataFrame:
    """Labelled feature rows in the configured range, from the lake.

    Raises:
        TrainingDataError: no features or labels (run ``make features`` first).
    """
    lake = Lake(settings.lake.root)
    if not lake.exists(LABELS_FILE) or not lake.files(FEATURES_ZONE):
        raise TrainingDataError(
            f"no features of {FEATURE_SET_VERSION} in the lake at {lake.uri}: "
            "run `make features` (or `make demo`) first"
        )
    features = lake.read_table(FEATURES_ZONE).to_pandas()
    labels = lake.read_table(LABELS_FILE).to_pandas()
    cfg = settings.training
    keep = pd.Series(True, index=features.index)
    if cfg.since is not None:
        keep &= features["ts"] >= pd.Timestamp(cfg.since)
    if cfg.until is not None:
        keep &= features["ts"] < pd.Timestamp(cfg.until)
    rows = scored_rows(settings, labelled_rows(features[keep.to_numpy()], labels))
    if rows.empty:
        raise TrainingDataError(
            f"no labelled rows between {cfg.since or 'the start'} and {cfg.until or 'now'}"
        )
    return rows


def validation_refs(settings: Settings) -> list[str]:
    """Run ids of the ETL validations behind the processed data (empty if unknown)."""
    try:
        from stack.db import connect

        with connect(settings) as conn:
            found = conn.execute(
                "SELECT DISTINCT run_id FROM etl_partitions ORDER BY run_id"
            ).fetchall()
        return [r[0] for r in found]
    except Exception as exc:  # the lineage is recorded as unknown, the run goes on
        log.warning("ETL validation runs unknown: %s", exc)
        return []


def git_commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return f"{head}{'-dirty' if dirty else ''}"
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _patient_days(rows: pd.DataFrame, minutes_per_row: float) -> float:
    return len(rows) * minutes_per_row / 1440.0


# --------------------------------------------------------------------------- steps
@dataclass(frozen=True)
class Prepared:
    """The rows split by patient: training (and its tuning subsample) and held-out test."""

    rows: pd.DataFrame
    split: PatientSplit
    train: pd.DataFrame
    tune: pd.DataFrame
    test: pd.DataFrame
    counts: dict[str, int]
    lineage: dict[str, str]


@dataclass(frozen=True)
class Chosen:
    """The family and parameters cross-validation chose, refit on every training row; the
    calibration map fitted on its out-of-fold predictions, and the threshold chosen on
    their calibrated values."""

    study: StudyResult
    model: Any
    operating_valid: OperatingPoint
    calibration: CalibrationChoice

    @property
    def family(self) -> str:
        return self.study.family

    @property
    def threshold(self) -> float:
        return self.operating_valid.threshold


@dataclass(frozen=True)
class Evaluation:
    """The chosen model on the held-out patients, scored once, beside NEWS2."""

    y: np.ndarray
    risk: np.ndarray  # calibrated
    raw: np.ndarray  # the estimator's score
    news2: np.ndarray
    test: dict[str, float]
    news2_metrics: dict[str, float]
    operating_test: OperatingPoint
    intervals: dict[str, Any]
    lead_model: dict[str, float]
    triggers: dict[str, MatchedComparison]  # each NEWS2 trigger vs the model, same budget
    ward_alerts_per_patient_day: float  # at the threshold, after the scorer's alert policy
    calibration: dict[str, float]  # of the calibrated risk (training.clinical)
    calibration_raw: dict[str, float]  # of the raw score, for comparison
    calibration_groups: pd.DataFrame  # per subgroup
    decision_curve: pd.DataFrame  # net benefit: model, treat all, each NEWS2 trigger
    subgroups: pd.DataFrame
    importances: pd.Series
    cv: dict[str, float]


def prepare(settings: Settings, rows: pd.DataFrame) -> Prepared:
    """Split by patient (test share, CV folds) and record the lineage of the data.

    Raises:
        TrainingDataError: too few deteriorations to split and tune.
    """
    cfg = settings.training
    try:
        split = split_by_patient(rows, test_share=cfg.test_share, folds=cfg.folds, seed=cfg.seed)
    except ValueError as exc:
        raise TrainingDataError(str(exc)) from exc
    train = rows[rows["patient_id"].isin(split.train_patients)].reset_index(drop=True)
    test = rows[rows["patient_id"].isin(split.test_patients)].reset_index(drop=True)
    tune = tuning_rows(train, cfg.tune_row_stride)
    lineage = {
        "vigil.kind": "training",
        "feature_set_version": FEATURE_SET_VERSION,
        "feature_set_digest": digest(),
        "data_from": str(rows["ts"].min()),
        "data_to": str(rows["ts"].max()),
        "git_commit": git_commit(),
        "etl_validation_runs": ",".join(validation_refs(settings))[:4000] or "unknown",
        "split_seed": str(split.seed),
    }
    counts = {
        "rows": len(rows),
        "patients": int(rows["patient_id"].nunique()),
        "train_rows": len(train),
        "tuning_rows": len(tune),
        "test_rows": len(test),
        "positive_rows": int(rows["label"].sum()),
        "test_positive_rows": int(test["label"].sum()),
    }
    return Prepared(rows, split, train, tune, test, counts, lineage)


def study(
    cfg: TrainingSettings,
    prepared: Prepared,
    family: Family,
    on_trial: Callable[[TrialRecord], None] | None = None,
) -> StudyResult:
    """One family's Optuna study on the tuning rows and folds, with the configured budget."""
    return tune_family(
        family,
        prepared.tune,
        prepared.split.folds,
        cfg.search_spaces.get(family, {}),
        trials=cfg.trials,
        timeout_s=cfg.timeout_s,
        seed=cfg.seed,
        n_jobs=cfg.n_jobs,
        on_trial=on_trial,
    )


def tune_families(
    cfg: TrainingSettings, prepared: Prepared, tracking: Tracking, parent: TrackedRun
) -> list[StudyResult]:
    """An Optuna study per family on the tuning rows (patient-grouped CV folds), each a
    child run of ``parent`` with a child run per trial."""
    studies: list[StudyResult] = []
    for family in cfg.families:
        with tracking.run(
            f"study-{family}", parent=parent, tags={"vigil.kind": "study", "vigil.family": family}
        ) as run:
            st = study(cfg, prepared, family, on_trial=_trial_logger(tracking, family, run))
            run.params(st.best_params)
            run.metrics({
                **{k: v for k, v in st.best.metrics.items() if k.startswith("cv_")},
                "trials_complete": sum(t.state == "COMPLETE" for t in st.trials),
                "trials_pruned": sum(t.state == "PRUNED" for t in st.trials),
                "study_seconds": st.seconds,
            })  # fmt: skip
        studies.append(st)
    return studies


def _trial_logger(
    tracking: Tracking, family: str, study: TrackedRun
) -> Callable[[TrialRecord], None]:
    """Each Optuna trial as a child run of its study (from whichever thread ran it)."""

    def on_trial(rec: TrialRecord) -> None:
        with tracking.run(
            f"{family}-trial-{rec.number:03d}", parent=study,
            tags={"vigil.kind": "trial", "vigil.family": family, "state": rec.state},
        ) as trial:  # fmt: skip
            trial.params(rec.params)
            trial.metrics(rec.metrics)
        log.info(
            "trial %s #%d %s cv_pr_auc=%.4f (%.1fs)",
            family, rec.number, rec.state, float(np.mean(rec.fold_pr_auc)), rec.seconds,
        )  # fmt: skip

    return on_trial


def choose(settings: Settings, prepared: Prepared, studies: list[StudyResult]) -> Chosen:
    """The family with the best cross-validated PR-AUC, its calibration map and threshold
    on validation (out-of-fold) predictions — never on the test set — and the model refit
    on all of the training rows."""
    cfg = settings.training
    best = max(studies, key=lambda s: s.cv_pr_auc)
    minutes = settings.features.cadence_minutes * cfg.tune_row_stride
    y_tune = prepared.tune["label"].to_numpy(dtype=np.int8)
    cal = choose_calibration(
        best.oof,
        y_tune,
        fold_index(prepared.tune["patient_id"], prepared.split.folds),
        shapes=tuple(cfg.calibration.shapes),
        odds_ratio=cfg.calibration.odds_ratio,
        outcome=cfg.calibration.outcome,
        horizon_hours=settings.features.horizon_hours,
    )
    oof = cal.calibration.apply(best.oof)
    op_valid = _choose(cfg, y_tune, oof, _patient_days(prepared.tune, minutes))
    model = build(
        best.family,
        best.best_params,
        positive_share=float(prepared.train["label"].mean()),
        seed=cfg.seed,
        n_jobs=cfg.n_jobs,
    )
    model.fit(prepared.train[list(FEATURE_NAMES)], prepared.train["label"].to_numpy(np.int8))
    return Chosen(best, model, op_valid, cal)


def evaluate(settings: Settings, prepared: Prepared, chosen: Chosen) -> Evaluation:
    """Score the held-out patients once: metrics at the threshold, NEWS2 and each of its
    triggers at a matched alert budget, patient-bootstrap intervals, lead times,
    subgroups, importances."""
    cfg = settings.training
    test = prepared.test
    days = _patient_days(test, settings.features.cadence_minutes)
    y = test["label"].to_numpy(dtype=np.int8)
    policy = AlertPolicySettings(
        settings.scorer.quiet_period_minutes, settings.scorer.realert_margin
    )
    raw = risk(chosen.model, test[list(FEATURE_NAMES)])
    p = chosen.calibration.calibration.apply(raw)
    news2 = test["news2_total"].to_numpy(dtype=np.float64)
    thr = chosen.threshold
    return Evaluation(
        y=y,
        risk=p,
        raw=raw,
        news2=news2,
        test=metrics_at(y, p, thr),
        news2_metrics=metrics_at(y, news2, TRIGGERS["news2_ge5"].min_total),
        operating_test=operating_point(y, p, thr, days),
        intervals=compare(
            y,
            {"model": p, "news2": news2},
            test["patient_id"].to_numpy(),
            replicates=cfg.gate.bootstrap,
            confidence=cfg.gate.confidence,
            seed=cfg.seed,
        ),
        lead_model=lead_times(test, p >= thr),
        triggers=matched_comparisons(test, p, days, policy),
        ward_alerts_per_patient_day=ward_alerts(test, p >= thr, p, policy) / days,
        calibration=calibration_stats(y, p),
        calibration_raw=calibration_stats(y, raw),
        calibration_groups=calibration_by_subgroup(test, p),
        decision_curve=decision_curve(
            y,
            p,
            {
                t.label: t.fires(news2, test["news2_red"].to_numpy(dtype=np.float64))
                for t in TRIGGERS.values()
            },
            DECISION_THRESHOLDS,
        ),
        subgroups=subgroup_metrics(test, p, thr),
        importances=importances(chosen.model, list(FEATURE_NAMES)),
        cv={k: v for k, v in chosen.study.best.metrics.items() if k.startswith("cv_")},
    )


def evaluation_metrics(chosen: Chosen, ev: Evaluation) -> dict[str, float]:
    """What the training run records of the evaluation (the threshold as a metric too,
    to compare runs; the registry's tag is what the platform reads)."""
    iv = ev.intervals["model"]
    return {
        **{f"test_{k}": v for k, v in ev.test.items()},
        **{f"news2_{k}": v for k, v in ev.news2_metrics.items()},
        **ev.cv,
        "threshold": chosen.threshold,
        "valid_sensitivity": chosen.operating_valid.sensitivity,
        "valid_precision": chosen.operating_valid.precision,
        "valid_alerts_per_patient_day": chosen.operating_valid.alerts_per_patient_day,
        "test_alerts_per_patient_day": ev.operating_test.alerts_per_patient_day,
        "test_ward_alerts_per_patient_day": ev.ward_alerts_per_patient_day,
        "test_roc_auc_low": iv["roc_auc"].low,
        "test_roc_auc_high": iv["roc_auc"].high,
        "test_pr_auc_low": iv["pr_auc"].low,
        "test_pr_auc_high": iv["pr_auc"].high,
        "lead_minutes_median": ev.lead_model["median_minutes"],
        "episodes_detected_share": _share(ev.lead_model),
        **{k: v for c in ev.triggers.values() for k, v in c.metrics().items()},
        **{f"test_{k}": v for k, v in ev.calibration.items() if k != "brier"},
        **{f"raw_{k}": v for k, v in ev.calibration_raw.items()},
        **{f"calibration_cv_log_loss_{k}": v for k, v in chosen.calibration.cv_log_loss.items()},
    }


def write_report(
    settings: Settings,
    prepared: Prepared,
    studies: list[StudyResult],
    chosen: Chosen,
    ev: Evaluation,
    out: Path,
    run_id: str,
) -> list[Path]:
    """The run's files under ``out``: split, figures, subgroups, importances, the model
    card and the drift-monitoring reference sample. Returns the figures."""
    cfg = settings.training
    (out / "split.json").write_text(json.dumps(_split_record(prepared.split, prepared.rows)))
    figures = _figures(out / "figures", ev, chosen.threshold, studies)
    ev.subgroups.to_csv(out / "subgroups.csv", index=False)
    ev.calibration_groups.to_csv(out / "calibration_subgroups.csv", index=False)
    (out / "calibration.json").write_text(
        json.dumps(chosen.calibration.calibration.to_dict(), indent=1)
    )
    ev.importances.rename("importance").to_csv(out / "feature_importance.csv")
    iv = ev.intervals
    card = ModelCard(
        model_name=cfg.registered_model,
        family=chosen.family,
        params=chosen.study.best_params,
        run_id=run_id,
        lineage=prepared.lineage,
        counts=prepared.counts,
        cv=ev.cv,
        test=ev.test,
        intervals={k: {m: iv[k][m] for m in iv[k]} for k in ("model", "news2", "model-news2")},
        triggers=ev.triggers,
        calibration=chosen.calibration,
        calibration_test=ev.calibration,
        calibration_raw=ev.calibration_raw,
        calibration_groups=ev.calibration_groups,
        operating_valid=chosen.operating_valid,
        operating_test=ev.operating_test,
        ward_alerts=ev.ward_alerts_per_patient_day,
        budget=cfg.threshold.describe(),
        lead_model=ev.lead_model,
        subgroups=ev.subgroups,
        importances=ev.importances,
        studies=studies,
        horizon_hours=settings.features.horizon_hours,
        rows=cfg.rows,
        enrichment=settings.simulator.episodes.enrichment,
    )
    (out / "model_card.md").write_text(render_card(card))
    ref_path = out / REFERENCE_ARTIFACT
    ref_path.parent.mkdir(parents=True, exist_ok=True)
    oof = chosen.calibration.calibration.apply(chosen.study.oof)  # the served scale
    sample = reference_sample(prepared.tune, oof, prepared.test, ev.risk, cfg.tune_row_stride)
    sample.to_parquet(ref_path)
    return figures


def register(
    settings: Settings, run: TrackedRun, prepared: Prepared, chosen: Chosen, ev: Evaluation
) -> ModelRef:
    """Log the model with the run (skops) and register it as the new ``@challenger``."""
    example = prepared.test[list(FEATURE_NAMES)].head(5)
    uri = run.log_sklearn(
        chosen.model,
        example,
        requirements=pip_requirements(chosen.family),
        metadata={
            "feature_set_version": FEATURE_SET_VERSION,
            "feature_names": list(FEATURE_NAMES),
            # Inside the sealed folder: the digest and signature cover the map too.
            CALIBRATION_METADATA: chosen.calibration.calibration.to_dict(),
        },
    )
    lineage = prepared.lineage
    return ModelRegistry(settings).register(
        uri,
        run_id=run.run_id,
        threshold=chosen.threshold,
        feature_set_version=FEATURE_SET_VERSION,
        family=chosen.family,
        calibration=chosen.calibration.calibration.method,
        tags={
            "threshold_budget": settings.training.threshold.describe(),
            "data_from": lineage["data_from"],
            "data_to": lineage["data_to"],
            "etl_validation_runs": lineage["etl_validation_runs"],
            "git_commit": lineage["git_commit"],
            "test_roc_auc": f"{ev.test['roc_auc']:.4f}",
            "test_pr_auc": f"{ev.test['pr_auc']:.4f}",
            "test_calibration_slope": f"{ev.calibration['calibration_slope']:.3f}",
            "risk_of": chosen.calibration.calibration.describe(),
        },
    )


def _figures(out: Path, ev: Evaluation, threshold: float, studies: list[StudyResult]) -> list[Path]:
    y, p = ev.y, ev.risk
    return [
        plots.save(plots.roc_pr(y, {"model": p, "NEWS2": ev.news2}), out / "roc_pr.png"),
        plots.save(plots.calibration(y, p, raw=ev.raw), out / "calibration.png"),
        plots.save(plots.decision_curve(ev.decision_curve), out / "decision_curve.png"),
        plots.save(plots.confusion(y, p >= threshold, threshold), out / "confusion_matrix.png"),
        plots.save(plots.importance(ev.importances), out / "feature_importance.png"),
        plots.save(plots.history(studies), out / "optuna_history.png"),
    ]


# --------------------------------------------------------------------------- the job
def run_training(settings: Settings, rows: pd.DataFrame | None = None) -> TrainSummary:
    """Prepare, tune, choose, evaluate, report and register; returns what was done.

    One MLflow run (children per study and trial) records every step.

    Args:
        rows: labelled feature rows; loaded from the lake (``load_rows``) when omitted.

    Raises:
        TrainingDataError: no data, or too few deteriorations to split and tune.
    """
    t0 = time.perf_counter()
    cfg = settings.training
    prepared = prepare(settings, load_rows(settings) if rows is None else rows)
    tracking = Tracking(settings, cfg.experiment)
    started = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    with (
        warnings.catch_warnings(),
        tracking.run(f"train-{started}", tags=prepared.lineage) as run,
        tempfile.TemporaryDirectory() as tmp,
    ):
        warnings.filterwarnings("ignore", module="sklearn")
        warnings.filterwarnings("ignore", category=UserWarning, module="mlflow")
        run.params({f"data_{k}": v for k, v in prepared.counts.items()})
        run.params({
            "families": ",".join(cfg.families), "trials_per_family": cfg.trials,
            "timeout_s_per_family": cfg.timeout_s, "folds": cfg.folds,
            "tune_row_stride": cfg.tune_row_stride, "test_share": cfg.test_share,
            "seed": cfg.seed,
        })  # fmt: skip
        studies = tune_families(cfg, prepared, tracking, run)
        chosen = choose(settings, prepared, studies)
        ev = evaluate(settings, prepared, chosen)
        run.tags({"vigil.family": chosen.family, "threshold_budget": cfg.threshold.describe()})
        run.params({f"best_{k}": v for k, v in chosen.study.best_params.items()})
        run.params({"best_family": chosen.family})
        run.metrics(evaluation_metrics(chosen, ev))
        out = Path(tmp)
        figures = write_report(settings, prepared, studies, chosen, ev, out, run.run_id)
        run.artifacts(out)
        ref = register(settings, run, prepared, chosen, ev)
        run.tags({"registered_version": ref.version})
        # A copy beside the repo for people who read files, not UIs.
        reports = settings.resolve(cfg.reports_dir) / run.run_id
        reports.mkdir(parents=True, exist_ok=True)
        (reports / "model_card.md").write_text((out / "model_card.md").read_text())
        for fig in figures:
            (reports / fig.name).write_bytes(fig.read_bytes())

    summary = TrainSummary(
        run_id=run.run_id,
        experiment=tracking.experiment,
        family=chosen.family,
        params=chosen.study.best_params,
        model_version=ref.version,
        threshold=chosen.threshold,
        test=ev.test,
        news2=ev.news2_metrics,
        cv=ev.cv,
        rows=prepared.counts,
        seconds=time.perf_counter() - t0,
        studies={
            s.family: {"cv_pr_auc": s.cv_pr_auc, "params": s.best_params, "trials": len(s.trials)}
            for s in studies
        },
        card_path=str(reports / "model_card.md"),
    )
    log.info(
        "training done",
        extra={"stage": "training", "run_id": summary.run_id, "summary": summary.to_dict()},
    )
    record_stage(settings, "training", seconds=summary.seconds,
                 gauges={"vigil_training_test_roc_auc": ("Held-out ROC-AUC of the last model",
                                                         ev.test["roc_auc"])},
                 labels={"model_version": ref.version})  # fmt: skip
    return summary


def _choose(
    cfg: TrainingSettings, y: np.ndarray, scores: np.ndarray, patient_days: float
) -> OperatingPoint:
    t = cfg.threshold
    return choose_threshold(
        y,
        scores,
        patient_days=patient_days,
        sensitivity=t.sensitivity,
        alerts_per_patient_day=t.alerts_per_patient_day,
    )


def _share(lead: dict[str, float]) -> float:
    return lead["detected"] / max(lead["episodes"], 1.0)


def reference_sample(
    tune: pd.DataFrame,
    oof: np.ndarray,
    test: pd.DataFrame,
    test_risk: np.ndarray,
    stride: int,
) -> pd.DataFrame:
    """The drift-monitoring reference: every patient of the training data, out-of-sample risk.

    Training patients contribute their tuning rows with out-of-fold risk, held-out patients
    every ``stride``-th row with the refit model's risk, so the risk distribution is the one
    the model shows on patients it has not seen (in-sample scores of a forest are not).
    """
    cols = ["patient_id", "ts", *FEATURE_NAMES, "label"]
    a = tune[cols].assign(risk=np.asarray(oof, dtype=np.float64), split="train")
    b = test[cols].assign(risk=np.asarray(test_risk, dtype=np.float64), split="test")
    b = b[b.groupby("patient_id", sort=False).cumcount() % stride == 0]
    return pd.concat([a, b], ignore_index=True)


def _split_record(split: PatientSplit, rows: pd.DataFrame) -> dict[str, Any]:
    return {
        "summary": split.summary(rows),
        "train_patients": list(split.train_patients),
        "test_patients": list(split.test_patients),
        "folds": [list(f) for f in split.folds],
    }


def main() -> None:
    """Train on the lake's labelled features and register the challenger."""
    settings = load_settings()
    configure_logging(settings.logging)
    try:
        s = run_training(settings)
    except TrainingDataError as exc:
        typer.echo(f"training: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(
        f"\nbest family {s.family} (CV PR-AUC {s.cv['cv_pr_auc_mean']:.3f} ± "
        f"{s.cv['cv_pr_auc_std']:.3f}) → {s.experiment} run {s.run_id}\n"
        f"held-out patients: ROC-AUC {s.test['roc_auc']:.3f} (NEWS2 {s.news2['roc_auc']:.3f}), "
        f"PR-AUC {s.test['pr_auc']:.3f} (NEWS2 {s.news2['pr_auc']:.3f})\n"
        f"registered version {s.model_version} as @{CHALLENGER}, threshold {s.threshold:.4f}\n"
        f"model card: {s.card_path}\n"
        f"took {s.seconds:.0f} s; next: `make promote`"
    )
