"""Data and prediction drift: the champion's reference sample against a current window.

Evidently 0.7 runs one column test per monitored feature (and one for the risk score);
this module decides which columns are testable, how each is compared, and reads the
verdicts back into plain dataclasses the trigger and the summary use.

Why not Evidently's defaults: rows of one patient are strongly correlated, so with
20,000 rows a per-row p-value test (K-S, chi²) flags every column of two baseline wards
drawn with different seeds. Numerical features use the Wasserstein distance in units of
the reference standard deviation, discrete ones (flags, NEWS2 sub-scores, AVPU) the
Jensen-Shannon distance, each with a threshold from config chosen above the
seed-to-seed spread of baseline wards (``bench/bench_drift.py`` measures the false-alarm
rate).
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from features.spec import DISCRETE_FEATURES, FEATURE_NAMES
from stack.settings import DriftSettings

RISK = "risk"
MIN_VALUES = 50  # fewer non-null values on either side: the column is not tested


@dataclass(frozen=True)
class ColumnDrift:
    """One column's verdict: the distance, the test that produced it, drifted or not."""

    column: str
    kind: str  # numerical | categorical
    method: str
    score: float
    threshold: float
    drifted: bool
    reference_mean: float | None
    current_mean: float | None

    @property
    def severity(self) -> float:
        """Score relative to its threshold (>1: drifted); ranks columns across tests."""
        return self.score / self.threshold if self.threshold else 0.0


@dataclass(frozen=True)
class DriftResult:
    """Feature and prediction drift of one window."""

    columns: tuple[ColumnDrift, ...]
    skipped: dict[str, str]
    prediction: ColumnDrift | None
    reference_rows: int
    current_rows: int

    @property
    def tested(self) -> int:
        return len(self.columns)

    @property
    def drifted(self) -> tuple[ColumnDrift, ...]:
        """Drifted feature columns, most severe first."""
        return tuple(sorted((c for c in self.columns if c.drifted), key=lambda c: -c.severity))

    @property
    def share(self) -> float:
        return len(self.drifted) / self.tested if self.tested else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "share": self.share,
            "tested": self.tested,
            "drifted": [c.column for c in self.drifted],
            "columns": [asdict(c) for c in sorted(self.columns, key=lambda c: -c.severity)],
            "skipped": self.skipped,
            "prediction": asdict(self.prediction) if self.prediction else None,
            "reference_rows": self.reference_rows,
            "current_rows": self.current_rows,
        }


def thin(frame: pd.DataFrame, max_rows: int) -> pd.DataFrame:
    """Every k-th row so at most ``max_rows`` remain; keeps every patient and the time spread."""
    if len(frame) <= max_rows:
        return frame
    step = int(np.ceil(len(frame) / max_rows))
    return frame.iloc[::step]


def columns_to_test(
    reference: pd.DataFrame, current: pd.DataFrame, exclude: tuple[str, ...]
) -> tuple[list[str], list[str], dict[str, str]]:
    """Numerical and categorical feature columns to test, and why the others are not."""
    numerical: list[str] = []
    categorical: list[str] = []
    skipped: dict[str, str] = {}
    for name in FEATURE_NAMES:
        if name in exclude:
            skipped[name] = "excluded by config (monitoring.drift.exclude)"
            continue
        if name not in reference or name not in current:
            skipped[name] = "missing from " + ("reference" if name not in reference else "current")
            continue
        ref_n = int(reference[name].notna().sum())
        cur_n = int(current[name].notna().sum())
        if min(ref_n, cur_n) < MIN_VALUES:
            skipped[name] = f"too few values (reference {ref_n}, current {cur_n})"
            continue
        if name in DISCRETE_FEATURES:
            categorical.append(name)
        elif float(np.nanstd(reference[name].to_numpy(dtype=np.float64))) == 0.0:
            skipped[name] = "constant in the reference"
        else:
            numerical.append(name)
    return numerical, categorical, skipped


def _frame(df: pd.DataFrame, numerical: list[str], categorical: list[str]) -> pd.DataFrame:
    out = df[numerical].astype(np.float64)
    for c in categorical:
        # Levels as strings so the test compares categories, "NA" being one of them.
        out[c] = df[c].round().astype("Int64").astype(str)
    return out


def detect_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    cfg: DriftSettings,
) -> tuple[DriftResult, Any]:
    """Run the Evidently drift report.

    Args:
        reference: feature rows the model was trained on.
        current: feature rows of the window.

    Returns:
        The verdicts and the Evidently snapshot (``save_html`` / ``save_json``).

    Raises:
        ValueError: no column can be tested (empty window or reference).
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    reference = thin(reference, cfg.max_rows)
    current = thin(current, cfg.max_rows)
    numerical, categorical, skipped = columns_to_test(reference, current, cfg.exclude)
    if not numerical and not categorical:
        raise ValueError(
            f"nothing to test: reference has {len(reference)} rows, current {len(current)}"
        )
    num_cols = numerical
    definition = DataDefinition(numerical_columns=num_cols, categorical_columns=categorical)
    preset = DataDriftPreset(
        drift_share=cfg.trigger_share,  # Evidently's dataset line counts as Vigil does
        num_method=cfg.num_method,
        num_threshold=cfg.num_threshold,
        cat_method=cfg.cat_method,
        cat_threshold=cfg.cat_threshold,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        snapshot = Report([preset], include_tests=True).run(
            Dataset.from_pandas(_frame(current, num_cols, categorical), data_definition=definition),
            Dataset.from_pandas(
                _frame(reference, num_cols, categorical), data_definition=definition
            ),
        )
    verdicts = _read(snapshot.dict(), reference, current, set(categorical))
    missing = set(numerical + categorical) - set(verdicts)
    if missing:
        raise ValueError(f"Evidently returned no verdict for {sorted(missing)}")
    result = DriftResult(
        columns=tuple(verdicts[c] for c in numerical + categorical),
        skipped=skipped,
        prediction=None,  # judged apart: see prediction_drift
        reference_rows=len(reference),
        current_rows=len(current),
    )
    return result, snapshot


def prediction_drift(
    reference: pd.Series, current: pd.Series, cfg: DriftSettings
) -> ColumnDrift | None:
    """Drift of the risk score (numerical test); None when either side has too few."""
    ref = pd.DataFrame({RISK: reference.to_numpy(dtype=np.float64)})
    cur = pd.DataFrame({RISK: current.to_numpy(dtype=np.float64)})
    ref, cur = thin(ref.dropna(), cfg.max_rows), thin(cur.dropna(), cfg.max_rows)
    if min(len(ref), len(cur)) < MIN_VALUES:
        return None
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    definition = DataDefinition(numerical_columns=[RISK])
    preset = DataDriftPreset(num_method=cfg.num_method, num_threshold=cfg.num_threshold)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        snap = Report([preset], include_tests=True).run(
            Dataset.from_pandas(cur, data_definition=definition),
            Dataset.from_pandas(ref, data_definition=definition),
        )
    return _read(snap.dict(), ref, cur, set()).get(RISK)


def _mean(frame: pd.DataFrame, column: str) -> float | None:
    v = frame[column].to_numpy(dtype=np.float64)
    return float(np.nanmean(v)) if np.isfinite(v).any() else None


def _read(
    report: dict[str, Any],
    reference: pd.DataFrame,
    current: pd.DataFrame,
    categorical: set[str],
) -> dict[str, ColumnDrift]:
    """Per-column scores from the metrics, verdicts from the tests (direction-agnostic)."""
    failed = {
        t["metric_config"]["params"].get("column")
        for t in report.get("tests", [])
        if t.get("id") == "drift" and t.get("status") == "FAIL"
    }
    out: dict[str, ColumnDrift] = {}
    for metric in report["metrics"]:
        conf = metric["config"]
        if not conf["type"].endswith(":ValueDrift"):
            continue
        col = conf["column"]
        out[col] = ColumnDrift(
            column=col,
            kind="categorical" if col in categorical else "numerical",
            method=str(conf["method"]),
            score=float(metric["value"]),
            threshold=float(conf["threshold"]),
            drifted=col in failed,
            reference_mean=_mean(reference, col),
            current_mean=_mean(current, col),
        )
    return out
