"""Fit the calibration map on out-of-fold predictions, choosing its shape by CV.

The raw scores come from the tuning study's out-of-fold predictions: every tuning row
scored by a model that never saw its patient. Each candidate shape (``platt``,
``isotonic``) is cross-fitted over the *same patient folds* — fitted on the other folds'
scores, judged by log-loss on the held-out fold — and the shape with the lower mean
log-loss is refitted on all of them. The refit model that is served was trained on more
rows than the fold models; the map is fitted on the fold models' scores (as scikit-learn's
``CalibratedClassifierCV(ensemble=False)`` does), and the held-out test patients show how
well it carries over (``training.clinical.calibration_stats``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from sklearn.isotonic import IsotonicRegression

from stack.calibration import Calibration, logit
from training.clinical import recalibration_line

F = npt.NDArray[np.float64]
SHAPES = ("platt", "isotonic")


@dataclass(frozen=True)
class CalibrationChoice:
    calibration: Calibration
    cv_log_loss: dict[str, float]  # per shape, and "none" for the raw score


def fit_platt(raw: npt.ArrayLike, y: npt.ArrayLike) -> Calibration:
    """Logistic recalibration of logit(raw)."""
    slope, intercept = recalibration_line(
        np.asarray(y, dtype=np.float64), logit(np.asarray(raw, dtype=np.float64))
    )
    if not (np.isfinite(slope) and slope > 0):
        slope, intercept = 1.0, 0.0  # degenerate data: the identity in logit space
    return Calibration("platt", intercept=intercept, slope=slope)


def fit_isotonic(raw: npt.ArrayLike, y: npt.ArrayLike) -> Calibration:
    """Isotonic regression, as strictly increasing knots (see ``stack.calibration``)."""
    r = np.clip(np.asarray(raw, dtype=np.float64), 0.0, 1.0)
    y_a = np.asarray(y, dtype=np.float64)
    fitted = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit_transform(r, y_a)
    order = np.argsort(r, kind="stable")
    r_s, f_s = r[order], fitted[order]
    # Blocks: runs of equal fitted value; each becomes one knot at its mean raw score.
    starts = np.r_[0, np.nonzero(np.diff(f_s) != 0)[0] + 1]
    xs = np.add.reduceat(r_s, starts) / np.diff(np.r_[starts, len(r_s)])
    ys = f_s[starts]
    # Anchor the ends, keeping both coordinates strictly increasing.
    keep = (xs > 0) & (xs < 1) & (ys > 0) & (ys < 1)
    xs, ys = xs[keep], ys[keep]
    xs = np.r_[0.0, xs, 1.0]
    ys = np.r_[0.0, ys, 1.0]
    mono = np.r_[True, (np.diff(xs) > 0) & (np.diff(ys) > 0)]
    while not mono.all():  # drop knots that would tie (rare: equal means or values)
        xs, ys = xs[mono], ys[mono]
        mono = np.r_[True, (np.diff(xs) > 0) & (np.diff(ys) > 0)]
    return Calibration("isotonic", knots_x=tuple(xs.tolist()), knots_y=tuple(ys.tolist()))


_FIT = {"platt": fit_platt, "isotonic": fit_isotonic}


def log_loss(y: npt.ArrayLike, p: npt.ArrayLike) -> float:
    y_a = np.asarray(y, dtype=np.float64)
    q = np.clip(np.asarray(p, dtype=np.float64), 1e-6, 1 - 1e-6)
    return float(-np.mean(y_a * np.log(q) + (1 - y_a) * np.log(1 - q)))


def choose_calibration(
    raw: npt.ArrayLike,
    y: npt.ArrayLike,
    fold: npt.ArrayLike,
    *,
    shapes: tuple[str, ...] = SHAPES,
    odds_ratio: float = 1.0,
    outcome: str = "deterioration",
    horizon_hours: float = 0.0,
) -> CalibrationChoice:
    """The shape of lowest cross-fitted log-loss over the patient folds, refit on all rows.

    Args:
        raw: out-of-fold raw scores; ``y`` their labels; ``fold`` each row's fold.
        odds_ratio, outcome, horizon_hours: carried into the map (see
            ``stack.calibration.Calibration``); the choice is made without the prevalence
            correction, on the training data's own event rate.
    """
    r = np.asarray(raw, dtype=np.float64)
    y_a = np.asarray(y, dtype=np.int8)
    f = np.asarray(fold)
    losses: dict[str, float] = {"none": log_loss(y_a, r)}
    for shape in shapes:
        per_fold: list[float] = []
        weights: list[int] = []
        for k in np.unique(f):
            fit_on, judge = f != k, f == k
            if len(np.unique(y_a[fit_on])) < 2:
                continue
            cal = _FIT[shape](r[fit_on], y_a[fit_on])
            per_fold.append(log_loss(y_a[judge], cal.apply(r[judge])))
            weights.append(int(judge.sum()))
        losses[shape] = float(np.average(per_fold, weights=weights)) if per_fold else np.inf
    best = min(shapes, key=lambda s: losses[s])
    fitted = _FIT[best](r, y_a)
    return CalibrationChoice(
        dataclasses.replace(
            fitted, odds_ratio=odds_ratio, outcome=outcome, horizon_hours=horizon_hours
        ),
        losses,
    )
