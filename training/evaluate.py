"""Honest numbers: metrics, patient-level bootstrap intervals, lead time and subgroups.

Feature rows of one patient are strongly correlated, so resampling *rows* would give
intervals far too narrow. Every interval here resamples *patients* (a cluster bootstrap):
each replicate draws patients with replacement and weights each row by how often its
patient was drawn. ROC-AUC and average precision (PR-AUC) are computed for all
replicates at once from one sort of the scores.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    brier_score_loss,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

F = npt.NDArray[np.float64]


def metrics_at(y: npt.ArrayLike, score: npt.ArrayLike, threshold: float) -> dict[str, float]:
    """Ranking metrics of ``score`` and classification metrics when ``score >= threshold``.

    ``brier`` is only meaningful for probabilities; pass a probability score.
    """
    y_a = np.asarray(y, dtype=np.int8)
    s = np.asarray(score, dtype=np.float64)
    pred = (s >= threshold).astype(np.int8)
    both = len(np.unique(y_a)) == 2
    return {
        "roc_auc": float(roc_auc_score(y_a, s)) if both else float("nan"),
        "pr_auc": float(average_precision_score(y_a, s)) if both else float("nan"),
        "f1": float(f1_score(y_a, pred, zero_division=0)),
        "precision": float(precision_score(y_a, pred, zero_division=0)),
        "recall": float(recall_score(y_a, pred, zero_division=0)),
        "accuracy": float(accuracy_score(y_a, pred)),
        "brier": float(brier_score_loss(y_a, np.clip(s, 0, 1))),
    }


def weighted_ranking(y: npt.ArrayLike, score: npt.ArrayLike, weights: F) -> tuple[F, F]:
    """ROC-AUC and average precision for each row of ``weights`` ([replicates, rows]).

    Tied scores count half (ROC) and form one threshold (AP), as in scikit-learn; with
    all weights 1 the results equal ``roc_auc_score`` and ``average_precision_score``.
    """
    y_a = np.asarray(y, dtype=np.int8)
    s = np.asarray(score, dtype=np.float64)
    order = np.argsort(-s, kind="stable")
    s_sorted = s[order]
    pos = (y_a[order] == 1).astype(np.float64)
    w = np.atleast_2d(weights)[:, order]
    starts = np.r_[0, np.nonzero(s_sorted[1:] != s_sorted[:-1])[0] + 1]
    wp = np.add.reduceat(w * pos, starts, axis=1)  # positive weight per distinct score
    wn = np.add.reduceat(w * (1 - pos), starts, axis=1)
    tp = np.cumsum(wp, axis=1)
    fp = np.cumsum(wn, axis=1)
    p_tot = tp[:, -1:]
    n_tot = fp[:, -1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        # ROC: a positive outranks the negatives below it, ties count half.
        neg_below = n_tot - fp
        roc = (wp * (neg_below + 0.5 * wn)).sum(axis=1) / (p_tot[:, 0] * n_tot[:, 0])
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        ap = (wp / p_tot * precision).sum(axis=1)
    return roc, ap


def bootstrap_weights(patients: npt.ArrayLike, replicates: int, rng: np.random.Generator) -> F:
    """Row weights of ``replicates`` patient-level bootstrap draws ([replicates, rows])."""
    codes, uniques = pd.factorize(pd.Series(np.asarray(patients)), sort=True)
    counts = rng.multinomial(len(uniques), np.full(len(uniques), 1 / len(uniques)), replicates)
    return counts[:, codes].astype(np.float64)


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high}

    def __str__(self) -> str:
        return f"{self.estimate:.3f} [{self.low:.3f}, {self.high:.3f}]"


def compare(
    y: npt.ArrayLike,
    scores: dict[str, npt.ArrayLike],
    patients: npt.ArrayLike,
    *,
    replicates: int,
    confidence: float,
    seed: int,
    chunk: int = 50,
) -> dict[str, dict[str, Interval]]:
    """ROC-AUC and PR-AUC of each score, and of each pairwise difference, with intervals.

    All scores are evaluated on the *same* bootstrap replicates, so the interval of a
    difference accounts for the scores being correlated. Keys of the result: each score
    name, and ``"a-b"`` for each ordered pair.
    """
    y_a = np.asarray(y, dtype=np.int8)
    names = list(scores)
    rng = np.random.default_rng(seed)
    draws: dict[str, list[F]] = {f"{n}:{m}": [] for n in names for m in ("roc_auc", "pr_auc")}
    done = 0
    while done < replicates:
        w = bootstrap_weights(patients, min(chunk, replicates - done), rng)
        for n in names:
            roc, ap = weighted_ranking(y_a, np.asarray(scores[n], dtype=np.float64), w)
            draws[f"{n}:roc_auc"].append(roc)
            draws[f"{n}:pr_auc"].append(ap)
        done += len(w)
    alpha = (1 - confidence) / 2
    full = {n: weighted_ranking(y_a, np.asarray(scores[n]), np.ones((1, len(y_a)))) for n in names}
    point = {
        f"{n}:{m}": float(full[n][i][0]) for n in names for i, m in enumerate(("roc_auc", "pr_auc"))
    }
    samples = {k: np.concatenate(v) for k, v in draws.items()}

    def interval(est: float, x: F) -> Interval:
        x = x[np.isfinite(x)]
        lo, hi = np.quantile(x, [alpha, 1 - alpha]) if len(x) else (np.nan, np.nan)
        return Interval(est, float(lo), float(hi))

    out: dict[str, dict[str, Interval]] = {}
    for n in names:
        out[n] = {
            m: interval(point[f"{n}:{m}"], samples[f"{n}:{m}"]) for m in ("roc_auc", "pr_auc")
        }
    for a in names:
        for b in names:
            if a == b:
                continue
            out[f"{a}-{b}"] = {
                m: interval(
                    point[f"{a}:{m}"] - point[f"{b}:{m}"],
                    samples[f"{a}:{m}"] - samples[f"{b}:{m}"],
                )
                for m in ("roc_auc", "pr_auc")
            }
    return out


def lead_times(rows: pd.DataFrame, alert: npt.ArrayLike) -> dict[str, float]:
    """Warning lead time before outcomes, over the episodes in ``rows``.

    Args:
        rows: ``patient_id``, ``label``, ``minutes_to_outcome`` (test rows).
        alert: whether each row alerts.

    Returns:
        ``episodes`` (patients with a positive row), ``detected`` (an alert among their
        positive rows, i.e. within the horizon before the outcome), ``median_minutes``
        (from the first such alert to the outcome, over detected episodes).
    """
    pos = rows["label"].to_numpy() == 1
    frame = pd.DataFrame(
        {
            "patient_id": rows["patient_id"].to_numpy()[pos],
            "lead": rows["minutes_to_outcome"].to_numpy(dtype=np.float64)[pos],
            "alert": np.asarray(alert, dtype=bool)[pos],
        }
    )
    episodes = frame["patient_id"].nunique()
    hit = frame[frame["alert"]].groupby("patient_id")["lead"].max()
    return {
        "episodes": float(episodes),
        "detected": float(len(hit)),
        "median_minutes": float(hit.median()) if len(hit) else float("nan"),
    }


def subgroup_of(rows: pd.DataFrame) -> dict[str, pd.Series]:
    """Age band, sex and SpO2 scale (2: hypercapnic COPD) of each row, from the static
    features."""
    age = rows["age"]
    band = pd.cut(age, bins=[-1, 49, 69, 200], labels=["<50", "50-69", "70+"]).astype("object")
    female = rows["female"].map({1.0: "F", 0.0: "M"})
    scale = rows["spo2_scale2"].map({1.0: "scale 2 (hypercapnic)", 0.0: "scale 1"})
    return {
        "age band": band.fillna("unknown"),
        "sex": female.fillna("unknown"),
        "SpO2 scale": scale.fillna("unknown"),
    }


def subgroup_masks(rows: pd.DataFrame) -> Iterator[tuple[str, Any, npt.NDArray[np.bool_]]]:
    """(group, value, row mask) for every value of every subgroup of :func:`subgroup_of`."""
    for group, labels in subgroup_of(rows).items():
        for value in sorted(labels.unique(), key=str):
            yield group, value, (labels == value).to_numpy()


def subgroup_metrics(rows: pd.DataFrame, score: npt.ArrayLike, threshold: float) -> pd.DataFrame:
    """Rows, positives, ROC-AUC, PR-AUC, sensitivity and PPV per subgroup."""
    s = np.asarray(score, dtype=np.float64)
    y = rows["label"].to_numpy(dtype=np.int8)
    out = []
    for group, value, m in subgroup_masks(rows):
        metric = metrics_at(y[m], s[m], threshold)
        out.append(
            {
                "group": group,
                "value": value,
                "patients": int(rows.loc[m, "patient_id"].nunique()),
                "rows": int(m.sum()),
                "positives": int(y[m].sum()),
                "roc_auc": metric["roc_auc"],
                "pr_auc": metric["pr_auc"],
                "sensitivity": metric["recall"],
                "ppv": metric["precision"],
            }
        )
    return pd.DataFrame(out)
