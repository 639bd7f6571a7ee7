"""Figures logged with every training run (matplotlib, Agg backend, PNG)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import numpy.typing as npt
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import (
    average_precision_score,
    confusion_matrix,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from training.tune import StudyResult


def roc_pr(y: npt.ArrayLike, scores: dict[str, npt.ArrayLike]) -> Figure:
    """ROC and precision-recall curves of each score on the same rows."""
    y_a = np.asarray(y)
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.8))
    for name, s in scores.items():
        fpr, tpr, _ = roc_curve(y_a, s)
        a.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(y_a, s):.3f})")
        prec, rec, _ = precision_recall_curve(y_a, s)
        b.plot(rec, prec, label=f"{name} (AP {average_precision_score(y_a, s):.3f})")
    a.plot([0, 1], [0, 1], ls=":", c="grey", label="chance")
    a.set(xlabel="false positive rate (1 − specificity)", ylabel="true positive rate (sensitivity)",
          title="ROC curve, held-out patients")  # fmt: skip
    b.axhline(float(y_a.mean()), ls=":", c="grey", label=f"prevalence {y_a.mean():.3f}")
    b.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)",
          title="Precision-recall curve, held-out patients")  # fmt: skip
    for ax in (a, b):
        ax.legend(loc="best", fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _deciles(y: npt.ArrayLike, p: npt.ArrayLike, bins: int) -> pd.DataFrame:
    frame = pd.DataFrame({"y": np.asarray(y), "p": np.asarray(p)})
    frame["bin"] = pd.qcut(frame["p"].rank(method="first"), bins, labels=False)
    return frame.groupby("bin").agg(p=("p", "mean"), y=("y", "mean"), n=("y", "size"))


def calibration(
    y: npt.ArrayLike, p: npt.ArrayLike, bins: int = 10, raw: npt.ArrayLike | None = None
) -> Figure:
    """Reliability diagram: observed event rate against mean predicted risk in risk
    deciles, on linear axes (left) and log axes (right, where a ward's low risks live);
    the raw score's curve beside the calibrated one when given."""
    g = _deciles(y, p, bins)
    curves = {"calibrated risk": g}
    if raw is not None:
        curves["raw score (before calibration)"] = _deciles(y, raw, bins)
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 4.8))
    top = float(max(max(c["p"].max(), c["y"].max()) for c in curves.values()) * 1.05)
    for ax, log in zip(axes, (False, True), strict=True):
        low = max(min(float(c["p"][c["p"] > 0].min()) for c in curves.values()), 1e-4)
        lo = low / 1.5 if log else 0.0
        ax.plot([lo, top], [lo, top], ls=":", c="grey", label="perfect calibration")
        for name, c in curves.items():
            ax.plot(c["p"], c["y"].clip(lower=lo if log else 0), marker="o", label=name)
        if log:
            ax.set(xscale="log", yscale="log")
        ax.set(xlabel="mean predicted risk (decile)",
               ylabel="observed deterioration rate within horizon",
               title="Calibration, held-out patients" + (" (log axes)" if log else ""))  # fmt: skip
        ax.legend(loc="upper left", fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def decision_curve(curve: pd.DataFrame) -> Figure:
    """Net benefit across threshold probabilities (Vickers & Elkin 2006): the model, alerting
    on everyone or no one, and each NEWS2 trigger."""
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    x = curve["threshold"]
    ax.plot(x, curve["model"], lw=2.2, label="model (alert when risk ≥ threshold)")
    ax.plot(x, curve["treat all"], c="grey", ls="--", label="alert on everyone")
    ax.axhline(0, c="black", lw=0.8, label="alert on no one")
    for name in curve.columns:
        if name not in ("threshold", "model", "treat all", "treat none"):
            ax.plot(x, curve[name], ls=":", label=name)
    top = float(np.nanmax(curve[[c for c in curve.columns if c != "threshold"]].to_numpy()))
    ax.set_ylim(-0.2 * max(top, 1e-3), max(top, 1e-3) * 1.15)
    ax.set(xlabel="threshold probability (the risk at which acting is worth it)",
           ylabel="net benefit (true alerts per row, less weighted false ones)",
           title="Decision curve, held-out patients")  # fmt: skip
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def confusion(y: npt.ArrayLike, alert: npt.ArrayLike, threshold: float) -> Figure:
    """Confusion matrix of feature rows at the operating threshold."""
    cm = confusion_matrix(np.asarray(y), np.asarray(alert, dtype=int), labels=[0, 1])
    fig, ax = plt.subplots(figsize=(5, 4.4))
    ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, f"{v:,}", ha="center", va="center",
                color="white" if v > cm.max() / 2 else "black")  # fmt: skip
    ax.set_xticks([0, 1], ["no alert", "alert"])
    ax.set_yticks([0, 1], ["no deterioration\nwithin horizon", "deterioration\nwithin horizon"])
    ax.set(xlabel="model at threshold", ylabel="outcome (feature rows)",
           title=f"Confusion matrix at threshold {threshold:.3f}")  # fmt: skip
    fig.tight_layout()
    return fig


def importance(values: pd.Series, top: int = 20) -> Figure:
    """The ``top`` features by importance."""
    v = values.head(top)[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(v) + 1.2))
    ax.barh(v.index, v.to_numpy())
    ax.set(xlabel="importance (|std. coefficient| or impurity/gain share)",
           title=f"Top {len(v)} features")  # fmt: skip
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def history(studies: list[StudyResult]) -> Figure:
    """Cross-validated PR-AUC of every trial, and the best so far, per family."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for st in studies:
        done = sorted((t for t in st.trials if t.state == "COMPLETE"), key=lambda t: t.number)
        if not done:
            continue
        n = [t.number for t in done]
        v = [float(np.mean(t.fold_pr_auc)) for t in done]
        line = ax.step(n, np.maximum.accumulate(v), where="post", label=f"{st.family} best so far")[
            0
        ]
        ax.scatter(n, v, color=line.get_color(), s=18, alpha=0.6)
        pruned = [t.number for t in st.trials if t.state == "PRUNED"]
        if pruned:
            ax.scatter(pruned, [min(v)] * len(pruned), marker="x", color=line.get_color(),
                       alpha=0.6, label=f"{st.family} pruned")  # fmt: skip
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="trial", ylabel="CV PR-AUC (patient-grouped)",
           title="Optuna optimisation history")  # fmt: skip
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
