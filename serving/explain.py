"""Why an alert: the features that contributed most to a row's risk.

Exact where the model allows it, cheap otherwise:

- a pipeline ending in a linear model: coefficient × the row's standardised value
  (the log-odds contribution relative to the training mean);
- XGBoost: its own per-feature SHAP contributions (``pred_contribs``);
- anything else (the random forest): occlusion — the drop in risk when a feature is
  replaced by its training median (the fitted imputer's statistics).

The first two are cheap (about 1.5 ms a row for a 400-tree XGBoost here), so the
service may explain crossed rows in the call that scored them (:func:`is_cheap`);
occlusion costs a prediction per feature per row, so it is left to ``/explain``, for the
alerts actually raised.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

F = npt.NDArray[np.float64]


def _estimator(model: Any) -> Any:
    """The final estimator (the last step of a pipeline)."""
    steps = getattr(model, "steps", None)
    return steps[-1][1] if steps else model


def _split(model: Any) -> tuple[Any, Any]:
    """(preprocessing pipeline or None, final estimator)."""
    steps = getattr(model, "steps", None)
    if steps and len(steps) > 1:
        from sklearn.pipeline import Pipeline

        return Pipeline(steps[:-1]), steps[-1][1]
    return None, _estimator(model)


def _method(est: Any) -> str:
    """How :func:`contributions` explains this estimator: linear, xgboost or occlusion."""
    if hasattr(est, "coef_"):
        return "linear"
    return "xgboost" if hasattr(est, "get_booster") else "occlusion"


def is_cheap(model: Any) -> bool:
    """Whether :func:`contributions` costs about as little as a prediction (exact kinds)."""
    return _method(_estimator(model)) != "occlusion"


def contributions(model: Any, x: pd.DataFrame) -> F:
    """Per-row, per-feature contributions ([rows, features]); larger = more risk."""
    pre, est = _split(model)
    method = _method(est)
    if method == "linear":
        z = pre.transform(x) if pre is not None else x.to_numpy(dtype=float)
        return np.asarray(z * np.asarray(est.coef_)[0], dtype=float)
    if method == "xgboost":
        import xgboost as xgb

        data = pre.transform(x) if pre is not None else x.to_numpy(dtype=float)
        dm = xgb.DMatrix(data, feature_names=list(x.columns))  # (numpy: 10x faster to build)
        contrib = est.get_booster().predict(dm, pred_contribs=True)
        return np.asarray(contrib[:, :-1], dtype=float)  # the last column is the bias
    # Occlusion against the training medians (or the column's own median without them).
    imputer = next((s for _n, s in getattr(model, "steps", []) if hasattr(s, "statistics_")), None)
    medians = (
        np.asarray(imputer.statistics_, dtype=float)
        if imputer is not None
        else np.nanmedian(x.to_numpy(dtype=float), axis=0)
    )
    base = model.predict_proba(x)[:, 1]
    out = np.empty(x.shape, dtype=float)
    for i in range(len(x)):
        arr = np.repeat(x.iloc[[i]].to_numpy(dtype=float), x.shape[1], axis=0)
        np.fill_diagonal(arr, medians)  # row j: feature j set to its median
        out[i] = base[i] - model.predict_proba(pd.DataFrame(arr, columns=x.columns))[:, 1]
    return out


def top_features(model: Any, x: pd.DataFrame, k: int) -> list[list[dict[str, Any]]]:
    """For each row, the ``k`` features that pushed its risk up most, with their values."""
    if len(x) == 0:
        return []
    c = contributions(model, x)
    names = list(x.columns)
    values = x.to_numpy(dtype=float)
    out = []
    for i in range(len(x)):
        order = np.argsort(-c[i], kind="stable")[:k]
        out.append(
            [
                {
                    "feature": names[j],
                    "value": None if np.isnan(values[i, j]) else float(values[i, j]),
                    "contribution": float(c[i, j]),
                }
                for j in order
            ]
        )
    return out
