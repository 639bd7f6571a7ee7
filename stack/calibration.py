"""The calibration map: what turns a classifier's score into a risk, shared by training
(which fits it) and serving (which applies it).

A model's raw score (``predict_proba``) ranks patients but is not a probability: class
weighting, tree ensembles and enriched training data all bend it. Training fits a map
from raw score to the observed event rate on out-of-fold predictions
(``training.calibrate``) and stores it **inside the sealed model folder** (the MLmodel
``metadata`` → ``calibration``), so the digest and signature that guard the estimator
guard the map too; ``stack.registry`` tags its method.

Two shapes, both strictly increasing on [0, 1] so the ranking (and every alert at a
matched budget) is the raw score's:

- ``platt``: ``risk = sigmoid(intercept + slope · logit(raw))`` (Platt 1999);
- ``isotonic``: the isotonic regression's blocks, each placed at the mean raw score of its
  rows, joined by straight lines and anchored at (0, 0) and (1, 1) — strictly increasing,
  unlike the step function, which would tie every score in a block.

Then, optionally, a **prevalence correction** for enriched training data: the odds are
multiplied by ``odds_ratio`` (deployment odds / training odds; Saerens et al., *Neural
Comput* 2002;14:21-41), e.g. 0.1 when the training ward had ten times the deployment
ward's event odds.

``outcome`` and ``horizon_hours`` say what the risk is a risk *of*, so a number shown to
a clinician always comes with its meaning.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import yaml

F = npt.NDArray[np.float64]
METHODS = ("none", "platt", "isotonic")
METADATA_KEY = "calibration"
_EPS = 1e-6


class CalibrationError(ValueError):
    """A calibration map that is not one (unknown method, not increasing, not finite)."""


@dataclass(frozen=True)
class Calibration:
    method: str = "none"
    knots_x: tuple[float, ...] = ()
    knots_y: tuple[float, ...] = ()
    intercept: float = 0.0
    slope: float = 1.0
    odds_ratio: float = 1.0
    outcome: str = "deterioration"
    horizon_hours: float = 0.0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise CalibrationError(f"unknown calibration method {self.method!r}")
        numbers = (*self.knots_x, *self.knots_y, self.intercept, self.slope, self.odds_ratio,
                   self.horizon_hours)  # fmt: skip
        if not all(math.isfinite(v) for v in numbers):
            raise CalibrationError("calibration numbers must be finite")
        if not self.odds_ratio > 0:
            raise CalibrationError("odds_ratio must be > 0")
        if self.method == "platt" and not self.slope > 0:
            raise CalibrationError("a Platt map needs slope > 0 (else it reverses the ranking)")
        if self.method == "isotonic":
            x, y = np.asarray(self.knots_x), np.asarray(self.knots_y)
            if len(x) < 2 or len(x) != len(y):
                raise CalibrationError("an isotonic map needs ≥ 2 knots, as many x as y")
            if not ((np.diff(x) > 0).all() and (np.diff(y) > 0).all()):
                raise CalibrationError("isotonic knots must be strictly increasing in x and y")
            if x[0] > 0 or x[-1] < 1 or y[0] < 0 or y[-1] > 1:
                raise CalibrationError("isotonic knots must span raw scores [0, 1] within [0, 1]")

    @property
    def calibrated(self) -> bool:
        return self.method != "none"

    def describe(self) -> str:
        """What the risk means, for people: ``risk of deterioration within 4 h``."""
        h = f"{self.horizon_hours:g} h" if self.horizon_hours else "the label horizon"
        return f"risk of {self.outcome} within {h}"

    def apply(self, raw: npt.ArrayLike) -> F:
        """The calibrated risk of each raw score (NaN stays NaN)."""
        r = np.clip(np.asarray(raw, dtype=np.float64), 0.0, 1.0)
        if self.method == "platt":
            p = _sigmoid(self.intercept + self.slope * logit(r))
        elif self.method == "isotonic":
            p = np.interp(r, self.knots_x, self.knots_y)
        else:
            p = r
        if self.odds_ratio != 1.0:
            p = _sigmoid(logit(p) + math.log(self.odds_ratio))
        return np.asarray(p, dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["knots_x"] = list(self.knots_x)
        out["knots_y"] = list(self.knots_y)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Calibration:
        """The map stored by :meth:`to_dict`; an absent map is ``none``.

        Raises:
            CalibrationError: unknown keys or an invalid map.
        """
        if not data:
            return cls()
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise CalibrationError(f"unknown calibration keys {sorted(unknown)}")
        try:
            kw = dict(data)
            kw["knots_x"] = tuple(float(v) for v in data.get("knots_x", ()))
            kw["knots_y"] = tuple(float(v) for v in data.get("knots_y", ()))
            for k in ("intercept", "slope", "odds_ratio", "horizon_hours"):
                if k in kw:
                    kw[k] = float(kw[k])
            return cls(**kw)
        except (TypeError, ValueError) as exc:
            raise CalibrationError(f"not a calibration map: {exc}") from exc


def logit(p: npt.ArrayLike) -> F:
    """log(p / (1 − p)), with p kept within [1e-6, 1 − 1e-6]."""
    q = np.clip(p, _EPS, 1 - _EPS)
    return np.asarray(np.log(q / (1 - q)), dtype=np.float64)


def _sigmoid(z: F) -> F:
    return np.asarray(1.0 / (1.0 + np.exp(-np.clip(z, -40.0, 40.0))), dtype=np.float64)


def read_calibration(model_folder: Path) -> Calibration:
    """The map stored in an MLflow model folder's ``MLmodel`` metadata (``none`` if the
    model predates calibration). Read from the folder whose digest was just checked."""
    mlmodel = model_folder / "MLmodel"
    meta = (yaml.safe_load(mlmodel.read_text()) or {}).get("metadata") or {}
    return Calibration.from_dict(meta.get(METADATA_KEY))
