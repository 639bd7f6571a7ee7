"""``make train``: tune every family, pick by cross-validation, register the challenger.

One MLflow parent run per job, in the experiment ``<prefix>-<training.experiment>``:

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
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import typer
from mlflow.models import infer_signature

from features.spec import FEATURE_NAMES, FEATURE_SET_VERSION, FEATURES_ZONE, LABELS_FILE, digest
from stack.contracts import REFERENCE_ARTIFACT
from stack.lake import Lake
from stack.localstack import mlflow_tracking_uri as tracking_uri
from stack.logs import configure_logging
from stack.metrics import record_stage
from stack.modelsafety import SKOPS_TRUSTED_TYPES
from stack.settings import REPO_ROOT, Settings, load_settings
from training import plots
from training.card import ModelCard, render_card
from training.dataset import PatientSplit, labelled_rows, split_by_patient
from training.evaluate import compare, lead_times, metrics_at, subgroup_metrics
from training.models import build, importances, pip_requirements, risk
from training.registry import CHALLENGER, Registry
from training.threshold import OperatingPoint, choose_threshold, operating_point
from training.tune import StudyResult, TrialRecord, tune_family, tuning_rows

log = logging.getLogger("vigil.training")


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
    rows = labelled_rows(features[keep.to_numpy()], labels)
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


# --------------------------------------------------------------------------- MLflow
def _log_trial(family: str) -> Any:
    def on_trial(rec: TrialRecord) -> None:
        with mlflow.start_run(run_name=f"{family}-trial-{rec.number:03d}", nested=True):
            mlflow.set_tags({"vigil.kind": "trial", "vigil.family": family, "state": rec.state})
            mlflow.log_params(rec.params)
            mlflow.log_metrics(rec.metrics)
        log.info(
            "trial %s #%d %s cv_pr_auc=%.4f (%.1fs)",
            family, rec.number, rec.state, float(np.mean(rec.fold_pr_auc)), rec.seconds,
        )  # fmt: skip

    return on_trial


def _figures(
    out: Path,
    y: np.ndarray,
    p: np.ndarray,
    news2: np.ndarray,
    threshold: float,
    imp: pd.Series,
    studies: list[StudyResult],
) -> list[Path]:
    return [
        plots.save(plots.roc_pr(y, {"model": p, "NEWS2": news2}), out / "roc_pr.png"),
        plots.save(plots.calibration(y, p), out / "calibration.png"),
        plots.save(plots.confusion(y, p >= threshold, threshold), out / "confusion_matrix.png"),
        plots.save(plots.importance(imp), out / "feature_importance.png"),
        plots.save(plots.history(studies), out / "optuna_history.png"),
    ]


# --------------------------------------------------------------------------- the job
def run_training(settings: Settings, rows: pd.DataFrame | None = None) -> TrainSummary:
    """Tune, select, evaluate, log and register; returns what was done.

    Args:
        rows: labelled feature rows; loaded from the lake (``load_rows``) when omitted.

    Raises:
        TrainingDataError: no data, or too few deteriorations to split and tune.
    """
    t0 = time.perf_counter()
    cfg = settings.training
    if rows is None:
        rows = load_rows(settings)
    try:
        split = split_by_patient(rows, test_share=cfg.test_share, folds=cfg.folds, seed=cfg.seed)
    except ValueError as exc:
        raise TrainingDataError(str(exc)) from exc
    train = rows[rows["patient_id"].isin(split.train_patients)].reset_index(drop=True)
    test = rows[rows["patient_id"].isin(split.test_patients)].reset_index(drop=True)
    tune = tuning_rows(train, cfg.tune_row_stride)
    minutes_per_row = settings.features.cadence_minutes

    registry = Registry(settings)
    experiment = registry.experiment_name
    mlflow.set_tracking_uri(tracking_uri(settings))
    mlflow.set_experiment(experiment)
    started = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    with (
        warnings.catch_warnings(),
        mlflow.start_run(run_name=f"train-{started}") as parent,
        tempfile.TemporaryDirectory() as tmp,
    ):
        warnings.filterwarnings("ignore", module="sklearn")
        warnings.filterwarnings("ignore", category=UserWarning, module="mlflow")
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
        mlflow.set_tags(lineage)
        counts = {
            "rows": len(rows),
            "patients": int(rows["patient_id"].nunique()),
            "train_rows": len(train),
            "tuning_rows": len(tune),
            "test_rows": len(test),
            "positive_rows": int(rows["label"].sum()),
            "test_positive_rows": int(test["label"].sum()),
        }
        mlflow.log_params({f"data_{k}": v for k, v in counts.items()})
        mlflow.log_params(
            {
                "families": ",".join(cfg.families),
                "trials_per_family": cfg.trials,
                "timeout_s_per_family": cfg.timeout_s,
                "folds": cfg.folds,
                "tune_row_stride": cfg.tune_row_stride,
                "test_share": cfg.test_share,
                "seed": cfg.seed,
            }
        )
        out = Path(tmp)
        (out / "split.json").write_text(json.dumps(_split_record(split, rows), indent=1))

        studies: list[StudyResult] = []
        for family in cfg.families:
            with mlflow.start_run(run_name=f"study-{family}", nested=True):
                mlflow.set_tags({"vigil.kind": "study", "vigil.family": family})
                st = tune_family(
                    family,
                    tune,
                    split.folds,
                    cfg.search_spaces.get(family, {}),
                    trials=cfg.trials,
                    timeout_s=cfg.timeout_s,
                    seed=cfg.seed,
                    n_jobs=cfg.n_jobs,
                    on_trial=_log_trial(family),
                )
                mlflow.log_params(st.best_params)
                mlflow.log_metrics(
                    {
                        **{k: v for k, v in st.best.metrics.items() if k.startswith("cv_")},
                        "trials_complete": sum(t.state == "COMPLETE" for t in st.trials),
                        "trials_pruned": sum(t.state == "PRUNED" for t in st.trials),
                        "study_seconds": st.seconds,
                    }
                )
            studies.append(st)
        best = max(studies, key=lambda s: s.cv_pr_auc)

        # Threshold on validation predictions (out-of-fold), never on the test set.
        y_tune = tune["label"].to_numpy(dtype=np.int8)
        op_valid = _choose(
            cfg, y_tune, best.oof, _patient_days(tune, minutes_per_row * cfg.tune_row_stride)
        )

        model = build(
            best.family,
            best.best_params,
            positive_share=float(train["label"].mean()),
            seed=cfg.seed,
            n_jobs=cfg.n_jobs,
        )
        x_train = train[list(FEATURE_NAMES)]
        model.fit(x_train, train["label"].to_numpy(dtype=np.int8))

        x_test = test[list(FEATURE_NAMES)]
        y = test["label"].to_numpy(dtype=np.int8)
        p = risk(model, x_test)
        news2 = test["news2_total"].to_numpy(dtype=np.float64)
        thr = op_valid.threshold
        m_test = metrics_at(y, p, thr)
        news2_m = metrics_at(y, news2, float(cfg.gate.news2_rule))
        op_test = operating_point(y, p, thr, _patient_days(test, minutes_per_row))
        rule_op = operating_point(
            y, news2, float(cfg.gate.news2_rule), _patient_days(test, minutes_per_row)
        )
        iv = compare(
            y,
            {"model": p, "news2": news2},
            test["patient_id"].to_numpy(),
            replicates=cfg.gate.bootstrap,
            confidence=cfg.gate.confidence,
            seed=cfg.seed,
        )
        lead_model = lead_times(test, p >= thr)
        lead_news2 = lead_times(test, news2 >= cfg.gate.news2_rule)
        groups = subgroup_metrics(test, p, thr)
        imp = importances(model, list(FEATURE_NAMES))

        cv = {k: v for k, v in best.best.metrics.items() if k.startswith("cv_")}
        mlflow.set_tags({"vigil.family": best.family, "threshold_budget": cfg.threshold.describe()})
        mlflow.log_params({f"best_{k}": v for k, v in best.best_params.items()})
        mlflow.log_param("best_family", best.family)
        mlflow.log_metrics(
            {
                **{f"test_{k}": v for k, v in m_test.items()},
                **{f"news2_{k}": v for k, v in news2_m.items()},
                **cv,
                "threshold": thr,
                "valid_sensitivity": op_valid.sensitivity,
                "valid_precision": op_valid.precision,
                "valid_alerts_per_patient_day": op_valid.alerts_per_patient_day,
                "test_alerts_per_patient_day": op_test.alerts_per_patient_day,
                "news2_rule_alerts_per_patient_day": rule_op.alerts_per_patient_day,
                "test_roc_auc_low": iv["model"]["roc_auc"].low,
                "test_roc_auc_high": iv["model"]["roc_auc"].high,
                "test_pr_auc_low": iv["model"]["pr_auc"].low,
                "test_pr_auc_high": iv["model"]["pr_auc"].high,
                "lead_minutes_median": lead_model["median_minutes"],
                "news2_lead_minutes_median": lead_news2["median_minutes"],
                "episodes_detected_share": _share(lead_model),
                "news2_episodes_detected_share": _share(lead_news2),
            }
        )  # fmt: skip
        figures = _figures(out / "figures", y, p, news2, thr, imp, studies)
        groups.to_csv(out / "subgroups.csv", index=False)
        imp.rename("importance").to_csv(out / "feature_importance.csv")
        card = ModelCard(
            model_name=cfg.registered_model,
            family=best.family,
            params=best.best_params,
            run_id=parent.info.run_id,
            lineage=lineage,
            counts=counts,
            cv=cv,
            test=m_test,
            intervals={k: {m: iv[k][m] for m in iv[k]} for k in ("model", "news2", "model-news2")},
            news2_rule=cfg.gate.news2_rule,
            news2_rule_op=rule_op,
            operating_valid=op_valid,
            operating_test=op_test,
            budget=cfg.threshold.describe(),
            lead_model=lead_model,
            lead_news2=lead_news2,
            subgroups=groups,
            importances=imp,
            studies=studies,
        )
        card_path = out / "model_card.md"
        card_path.write_text(render_card(card))
        ref_path = out / REFERENCE_ARTIFACT
        ref_path.parent.mkdir(parents=True, exist_ok=True)
        reference_sample(tune, best.oof, test, p, cfg.tune_row_stride).to_parquet(ref_path)
        mlflow.log_artifacts(str(out))

        example = x_test.head(5)
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=infer_signature(example, model.predict_proba(example)),
            input_example=example,
            serialization_format="skops",  # no arbitrary code on load, unlike pickle
            skops_trusted_types=list(SKOPS_TRUSTED_TYPES),
            pyfunc_predict_fn="predict_proba",
            pip_requirements=pip_requirements(best.family),
            metadata={
                "feature_set_version": FEATURE_SET_VERSION,
                "feature_names": list(FEATURE_NAMES),
                "threshold": thr,
            },
        )
        version = registry.register(
            info.model_uri,
            run_id=parent.info.run_id,
            tags={
                "feature_set_version": FEATURE_SET_VERSION,
                "threshold": f"{thr:.6f}",
                "threshold_budget": cfg.threshold.describe(),
                "family": best.family,
                "data_from": lineage["data_from"],
                "data_to": lineage["data_to"],
                "etl_validation_runs": lineage["etl_validation_runs"],
                "git_commit": lineage["git_commit"],
                "test_roc_auc": f"{m_test['roc_auc']:.4f}",
                "test_pr_auc": f"{m_test['pr_auc']:.4f}",
            },
        )
        mlflow.set_tag("registered_version", version)
        # A copy beside the repo for people who read files, not UIs.
        reports = settings.resolve(cfg.reports_dir) / parent.info.run_id
        reports.mkdir(parents=True, exist_ok=True)
        (reports / "model_card.md").write_text(card_path.read_text())
        for fig in figures:
            (reports / fig.name).write_bytes(fig.read_bytes())

    summary = TrainSummary(
        run_id=parent.info.run_id,
        experiment=experiment,
        family=best.family,
        params=best.best_params,
        model_version=version,
        threshold=thr,
        test=m_test,
        news2=news2_m,
        cv=cv,
        rows=counts,
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
                                                         m_test["roc_auc"])},
                 labels={"model_version": version})  # fmt: skip
    return summary


def _choose(cfg: Any, y: np.ndarray, scores: np.ndarray, patient_days: float) -> OperatingPoint:
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
