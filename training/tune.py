"""One Optuna study per model family, scored by patient-grouped cross-validation.

The objective fits the family on all folds but one and scores the held-out fold's
patients, fold by fold; the running mean PR-AUC is reported after each fold, so the
median pruner stops a trial that is clearly behind the others at the same fold. The
study is seeded (TPE sampler) and runs trials one at a time, so the same data and seed
give the same chosen hyperparameters. The study knows nothing of MLflow: the caller
passes ``on_trial`` to record each finished or pruned trial.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import optuna
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

from features.spec import FEATURE_NAMES
from stack.settings import Family, ParamRange
from training.models import build, risk, suggest

F = npt.NDArray[np.float64]


@dataclass(frozen=True)
class TrialRecord:
    number: int
    params: dict[str, Any]
    state: str  # COMPLETE | PRUNED
    fold_pr_auc: tuple[float, ...]
    fold_roc_auc: tuple[float, ...]
    seconds: float

    @property
    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {"seconds": self.seconds, "folds_scored": len(self.fold_pr_auc)}
        for name, vals in (("pr_auc", self.fold_pr_auc), ("roc_auc", self.fold_roc_auc)):
            if vals:
                out[f"cv_{name}_mean"] = float(np.mean(vals))
                out[f"cv_{name}_std"] = float(np.std(vals))
            for i, v in enumerate(vals):
                out[f"fold{i}_{name}"] = v
        return out


@dataclass
class StudyResult:
    """The best trial of a family's study, its out-of-fold scores and the history."""

    family: Family
    best_params: dict[str, Any]
    best: TrialRecord
    oof: F  # out-of-fold risk of every tuning row under the best parameters
    trials: list[TrialRecord] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def cv_pr_auc(self) -> float:
        return float(np.mean(self.best.fold_pr_auc))


def tuning_rows(rows: pd.DataFrame, stride: int) -> pd.DataFrame:
    """Every ``stride``-th row of each patient, in time order (neighbours are near copies)."""
    ordered = rows.sort_values(["patient_id", "ts"], kind="stable")
    keep = ordered.groupby("patient_id", sort=False).cumcount() % stride == 0
    return ordered[keep.to_numpy()].reset_index(drop=True)


def fold_index(patients: pd.Series, folds: tuple[tuple[str, ...], ...]) -> npt.NDArray[np.int64]:
    """The fold of each row's patient.

    Raises:
        ValueError: a row's patient is in no fold (it would leak into every training set).
    """
    lookup = {p: k for k, members in enumerate(folds) for p in members}
    idx = patients.map(lookup)
    if idx.isna().any():
        raise ValueError(f"{int(idx.isna().sum())} rows belong to patients outside the folds")
    return np.asarray(idx.to_numpy(dtype=np.int64), dtype=np.int64)


def tune_family(
    family: Family,
    rows: pd.DataFrame,
    folds: tuple[tuple[str, ...], ...],
    space: dict[str, ParamRange],
    *,
    trials: int,
    timeout_s: float | None,
    seed: int,
    n_jobs: int,
    on_trial: Callable[[TrialRecord], None] | None = None,
) -> StudyResult:
    """Search ``space`` for ``family`` on ``rows`` (``label`` + feature columns).

    Raises:
        ValueError: no trial completed (e.g. every fit failed), or a fold lacks positives.
    """
    x = rows[list(FEATURE_NAMES)]
    y = rows["label"].to_numpy(dtype=np.int8)
    fold = fold_index(rows["patient_id"], folds)
    for k in range(len(folds)):
        if not (y[fold == k] == 1).any():
            raise ValueError(f"CV fold {k} has no positive rows: too few deteriorations")
    best_oof: dict[str, Any] = {"value": -np.inf, "oof": None}
    records: list[TrialRecord] = []

    def objective(trial: optuna.Trial) -> float:
        t0 = time.perf_counter()
        params = suggest(trial, space)
        oof = np.full(len(y), np.nan)
        prs: list[float] = []
        rocs: list[float] = []
        for k in range(len(folds)):
            train, valid = fold != k, fold == k
            model = build(
                family,
                params,
                positive_share=float(y[train].mean()),
                seed=seed,
                n_jobs=n_jobs,
            )
            model.fit(x[train], y[train])
            oof[valid] = risk(model, x[valid])
            prs.append(float(average_precision_score(y[valid], oof[valid])))
            rocs.append(float(roc_auc_score(y[valid], oof[valid])))
            trial.report(float(np.mean(prs)), step=k)
            if k < len(folds) - 1 and trial.should_prune():
                rec = TrialRecord(
                    trial.number, params, "PRUNED", tuple(prs), tuple(rocs),
                    time.perf_counter() - t0,
                )  # fmt: skip
                records.append(rec)
                if on_trial is not None:
                    on_trial(rec)
                raise optuna.TrialPruned()
        value = float(np.mean(prs))
        rec = TrialRecord(
            trial.number, params, "COMPLETE", tuple(prs), tuple(rocs), time.perf_counter() - t0
        )
        records.append(rec)
        if on_trial is not None:
            on_trial(rec)
        if value > best_oof["value"]:
            best_oof.update(value=value, oof=oof, record=rec)
        return value

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize",
        study_name=family,
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, trials // 2)),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0),
    )
    t0 = time.perf_counter()
    study.optimize(objective, n_trials=trials, timeout=timeout_s, catch=())
    if best_oof["oof"] is None:
        raise ValueError(f"no {family} trial completed within the budget")
    return StudyResult(
        family=family,
        best_params=dict(best_oof["record"].params),
        best=best_oof["record"],
        oof=best_oof["oof"],
        trials=records,
        seconds=time.perf_counter() - t0,
    )
