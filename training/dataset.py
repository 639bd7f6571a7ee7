"""Training data: labelled feature rows, split by patient so that no number is flattered.

A patient's rows are strongly correlated minute to minute; a model evaluated on rows of
patients it was trained on looks far better than it is. So every split here is by
patient: a held-out test set of patients, and grouped cross-validation folds over the
rest. The split is stratified by whether a patient ever deteriorates (positives are rare,
~1-2 % of rows), deterministic by seed, and returned as plain data so that the training
run can record it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.labels import STATUS_LABELLED
from features.spec import CHANNELS, FEATURE_NAMES


@dataclass(frozen=True)
class PatientSplit:
    """Which patients train, which test, and the cross-validation folds over training."""

    train_patients: tuple[str, ...]
    test_patients: tuple[str, ...]
    folds: tuple[tuple[str, ...], ...]  # validation patients of each fold
    seed: int

    def summary(self, rows: pd.DataFrame) -> dict[str, object]:
        """Counts per side, for the run's record."""
        out: dict[str, object] = {"seed": self.seed, "folds": len(self.folds)}
        for side, pts in (("train", self.train_patients), ("test", self.test_patients)):
            part = rows[rows["patient_id"].isin(pts)]
            out[f"{side}_patients"] = len(pts)
            out[f"{side}_rows"] = len(part)
            out[f"{side}_positive_rows"] = int((part["label"] == 1).sum())
        return out


def labelled_rows(features: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """Feature rows with a known label (censored and after-outcome rows dropped).

    Adds ``label`` and ``minutes_to_outcome`` (for lead times; NaN without an outcome).

    Raises:
        ValueError: a feature column is missing, or labels do not match feature rows.
    """
    missing = [c for c in ("patient_id", "ts", *FEATURE_NAMES) if c not in features.columns]
    if missing:
        raise ValueError(f"feature table lacks {missing[:5]} (feature set changed?)")
    joined = features.merge(
        labels[["patient_id", "ts", "label", "label_status", "minutes_to_outcome"]],
        on=["patient_id", "ts"],
        how="left",
        validate="one_to_one",
    )
    if joined["label_status"].isna().any():
        n = int(joined["label_status"].isna().sum())
        raise ValueError(f"{n} feature rows have no label row: rebuild labels first")
    keep = joined["label_status"] == STATUS_LABELLED
    out = joined[keep].drop(columns="label_status").reset_index(drop=True)
    out["label"] = out["label"].astype("int8")
    return out


def fresh_rows(rows: pd.DataFrame, cadence_minutes: int) -> pd.DataFrame:
    """The rows with a reading since the previous feature row (``cadence_minutes``).

    These are the moments the scorer scores (it scores each event). On a continuously
    monitored ward that is nearly every row; on a ward that charts observation sets, it is
    the sets, and the rows in between (whose vitals are past their carry limit) are
    predictions nobody makes, so they neither train nor evaluate a model.
    """
    ages = rows[[f"{c}_age_min" for c in CHANNELS]].to_numpy(dtype=np.float64)
    newest = np.min(np.where(np.isnan(ages), np.inf, ages), axis=1, initial=np.inf)
    return rows[newest < cadence_minutes].reset_index(drop=True)


def split_by_patient(
    rows: pd.DataFrame, *, test_share: float = 0.2, folds: int = 5, seed: int = 0
) -> PatientSplit:
    """Hold out ``test_share`` of patients and cut the rest into ``folds`` groups.

    Patients who ever have a positive row and those who never do are shuffled and dealt
    out separately, so each side and each fold gets its share of both.

    Raises:
        ValueError: too few patients (of either kind) for the requested split.
    """
    if not 0 < test_share < 1 or folds < 2:
        raise ValueError("need 0 < test_share < 1 and folds >= 2")
    ever = rows.groupby("patient_id", sort=True)["label"].max()
    rng = np.random.default_rng(seed)
    train: list[str] = []
    test: list[str] = []
    fold_of: dict[str, int] = {}
    for positive in (True, False):
        group = ever.index[(ever == 1) == positive].to_numpy(dtype=object)
        if positive and len(group) < folds + 1:
            raise ValueError(
                f"{len(group)} patients with a positive label: too few for a held-out test "
                f"set and {folds} folds (simulate a larger ward or a longer window)"
            )
        group = group[rng.permutation(len(group))]
        n_test = max(1, round(len(group) * test_share))
        test += group[:n_test].tolist()
        rest = group[n_test:].tolist()
        for i, pid in enumerate(rest):
            fold_of[pid] = i % folds
        train += rest
    fold_lists = tuple(tuple(sorted(p for p, f in fold_of.items() if f == k)) for k in range(folds))
    return PatientSplit(
        train_patients=tuple(sorted(train)),
        test_patients=tuple(sorted(test)),
        folds=fold_lists,
        seed=seed,
    )
