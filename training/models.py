"""The candidate model families: how each is built from hyperparameters, and searched.

Each family is an sklearn estimator that takes the feature frame as it is (``NaN`` where
a vital has not been observed) and ships its fitted preprocessing with it, so serving
adds only transport and threshold:

- ``logistic_regression``: median imputation → standardisation → class-weighted L2
  logistic regression;
- ``random_forest``: median imputation → class-weighted (per bootstrap sample) forest;
- ``xgboost``: gradient-boosted trees, missing values handled natively, positives
  up-weighted by the class ratio.
"""

from __future__ import annotations

from importlib.metadata import packages_distributions, version
from typing import Any

import numpy as np
import numpy.typing as npt
import optuna
import pandas as pd
from sklearn.base import ClassifierMixin
from sklearn.ensemble import RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from xgboost import XGBClassifier

from stack.settings import Family, ParamRange

FAMILIES: tuple[Family, ...] = ("logistic_regression", "random_forest", "xgboost")
# What loading and running a logged model needs, beyond Python: pinned to the versions it
# was trained with. Declared, not inferred: MLflow's inference imports the model in a
# subprocess and costs ~10 s per logged model.
_RUNTIME = ("mlflow", "sklearn", "skops", "numpy", "pandas", "scipy")  # import names


def pip_requirements(family: str) -> list[str]:
    """Pinned requirements of a logged model of ``family`` (the installed distributions:
    ``sklearn`` is scikit-learn, and ``xgboost`` may come as xgboost-cpu)."""
    dists = packages_distributions()
    modules = [*_RUNTIME, *(("xgboost",) if family == "xgboost" else ())]
    names = [m if m in dists[m] else dists[m][0] for m in modules]  # mlflow, not -skinny
    return [f"{name}=={version(name)}" for name in names]


def suggest(trial: optuna.Trial, space: dict[str, ParamRange]) -> dict[str, Any]:
    """Draw one value per hyperparameter of ``space`` (``conf/`` search spaces)."""
    out: dict[str, Any] = {}
    for name, r in sorted(space.items()):
        if r.choices is not None:
            out[name] = trial.suggest_categorical(name, list(r.choices))
        elif r.is_int:
            assert isinstance(r.low, int)
            assert isinstance(r.high, int)
            step = int(r.step) if r.step is not None else 1
            out[name] = trial.suggest_int(name, r.low, r.high, step=step, log=r.log)
        else:
            assert r.low is not None
            assert r.high is not None
            out[name] = trial.suggest_float(
                name, float(r.low), float(r.high), log=r.log, step=r.step
            )
    return out


def build(
    family: Family, params: dict[str, Any], *, positive_share: float, seed: int, n_jobs: int
) -> ClassifierMixin:
    """A fresh, unfitted estimator of ``family`` with ``params``.

    Args:
        positive_share: share of positive training rows (sets XGBoost's class weight).
        seed: every random choice of the estimator derives from it.
        n_jobs: worker threads.

    Raises:
        ValueError: an unknown family, or a parameter the family does not take.
    """
    if family == "logistic_regression":
        lr = LogisticRegression(class_weight="balanced", max_iter=1000, random_state=seed)
        return _with_params(
            Pipeline(
                [
                    ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
                    ("scale", StandardScaler()),
                    ("model", lr),
                ]
            ),
            {f"model__{k}": v for k, v in params.items()},
        )
    if family == "random_forest":
        p = dict(params)
        if isinstance(p.get("max_features"), str) and p["max_features"] not in {"sqrt", "log2"}:
            p["max_features"] = float(p["max_features"])
        rf = RandomForestClassifier(
            class_weight="balanced_subsample", random_state=seed, n_jobs=n_jobs
        )
        return _with_params(
            Pipeline(
                [
                    ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
                    ("model", rf),
                ]
            ),
            {f"model__{k}": v for k, v in p.items()},
        )
    if family == "xgboost":
        share = min(max(positive_share, 1e-6), 0.5)
        xgb = XGBClassifier(
            tree_method="hist",
            n_jobs=n_jobs,
            random_state=seed,
            scale_pos_weight=(1 - share) / share,
            eval_metric="aucpr",
        )
        return _with_params(xgb, params)
    raise ValueError(f"unknown model family {family!r}; known: {', '.join(FAMILIES)}")


def _with_params(est: Any, params: dict[str, Any]) -> ClassifierMixin:
    valid = est.get_params()
    unknown = [k for k in params if k not in valid]
    if unknown:
        raise ValueError(f"unknown hyperparameters {unknown} for {type(est).__name__}")
    est.set_params(**params)
    return est


def risk(model: Any, x: pd.DataFrame) -> npt.NDArray[np.float64]:
    """The positive-class probability of each row."""
    return np.asarray(model.predict_proba(x)[:, 1], dtype=np.float64)


def importances(model: Any, names: list[str]) -> pd.Series:
    """Per-feature importance, largest first: |standardised coefficient| for the logistic
    regression, impurity/gain importance for the trees."""
    est = model.named_steps["model"] if isinstance(model, Pipeline) else model
    if hasattr(est, "coef_"):
        values = np.abs(np.asarray(est.coef_)[0])
    else:
        values = np.asarray(est.feature_importances_, dtype=np.float64)
    return pd.Series(values, index=names).sort_values(ascending=False)
