"""Patient-level splits: no patient on both sides, positives on every side, reproducible."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.spec import FEATURE_NAMES
from training.dataset import labelled_rows, split_by_patient


def _rows(patients: int = 200, per: int = 30, positive_share: float = 0.1) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    pids = [f"pt-{i:04d}" for i in range(patients)]
    positive = set(rng.choice(pids, int(patients * positive_share), replace=False).tolist())
    rows = pd.DataFrame(
        {
            "patient_id": np.repeat(pids, per),
            "ts": np.tile(
                pd.date_range("2026-01-05", periods=per, freq="5min", tz="UTC"), patients
            ),
        }
    )
    rows["label"] = [
        int(p in positive and k >= per - 5)
        for p, k in zip(rows["patient_id"], np.tile(range(per), patients), strict=True)
    ]
    return rows


def test_no_patient_is_on_both_sides_and_folds_partition_training() -> None:
    rows = _rows()
    s = split_by_patient(rows, test_share=0.25, folds=4, seed=3)
    assert not set(s.train_patients) & set(s.test_patients)
    assert set(s.train_patients) | set(s.test_patients) == set(rows["patient_id"])
    in_folds = [p for f in s.folds for p in f]
    assert sorted(in_folds) == sorted(s.train_patients)  # each training patient in one fold
    ever = rows.groupby("patient_id")["label"].max()
    for side in (s.test_patients, *s.folds):
        assert ever[list(side)].sum() >= 2  # positives everywhere
    assert abs(len(s.test_patients) / 200 - 0.25) < 0.02
    info = s.summary(rows)
    assert info["train_rows"] + info["test_rows"] == len(rows)
    assert info["test_positive_rows"] > 0


def test_split_is_deterministic_by_seed() -> None:
    rows = _rows()
    assert split_by_patient(rows, seed=1) == split_by_patient(rows, seed=1)
    assert (
        split_by_patient(rows, seed=1).test_patients != split_by_patient(rows, seed=2).test_patients
    )


def test_too_few_positive_patients_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="too few for a held-out test set"):
        split_by_patient(_rows(patients=20, positive_share=0.1), folds=5)


def test_labelled_rows_drop_censored_and_after_outcome_and_need_every_label() -> None:
    keys = _rows(patients=3, per=4)[["patient_id", "ts"]]
    ones = pd.DataFrame(np.ones((len(keys), len(FEATURE_NAMES))), columns=list(FEATURE_NAMES))
    feats = pd.concat([keys, ones], axis=1)
    status = ["labelled", "labelled", "censored", "after_outcome"] * 3
    labels = keys.assign(
        label=[0, 1, None, None] * 3,
        label_status=status,
        minutes_to_outcome=[300.0, 100.0, np.nan, np.nan] * 3,
    )
    out = labelled_rows(feats, labels)
    assert len(out) == 6
    assert out["label"].tolist() == [0, 1] * 3
    assert out["minutes_to_outcome"].tolist() == [300.0, 100.0] * 3  # for lead times
    with pytest.raises(ValueError, match="no label row"):
        labelled_rows(feats, labels.iloc[:-1])
    with pytest.raises(ValueError, match="feature table lacks"):
        labelled_rows(feats.drop(columns=FEATURE_NAMES[0]), labels)


def test_fresh_rows_keep_the_rows_with_a_reading_since_the_previous_row() -> None:
    from features.spec import CHANNELS
    from training.dataset import fresh_rows

    ages = {
        "a": [0.0, 4.0, 5.0, np.nan],  # heart rate: fresh, fresh, stale, none in the window
        "b": [np.nan, np.nan, 30.0, 2.0],  # temperature: the last row is fresh through it
    }
    rows = pd.DataFrame({f"{c}_age_min": [np.nan] * 4 for c in CHANNELS})
    rows["heart_rate_age_min"] = ages["a"]
    rows["temperature_age_min"] = ages["b"]
    rows["row"] = range(4)
    assert fresh_rows(rows, 5)["row"].tolist() == [0, 1, 3]
    assert fresh_rows(rows, 6)["row"].tolist() == [0, 1, 2, 3]
    assert fresh_rows(rows.iloc[:0], 5).empty
