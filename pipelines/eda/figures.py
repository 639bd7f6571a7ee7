"""The report's figures (matplotlib + seaborn), one PNG per section, readable at page width."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a display

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.artist import Artist
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from features.cleaning import VITALS
from pipelines.eda.analysis import LABELS, news2_band
from pipelines.eda.data import EdaData

GROUP_COLORS = {"deteriorated": "#c0392b", "stayed well": "#2471a3",
                "matched controls": "#2471a3"}  # fmt: skip
DPI = 110
BIN_WIDTH = {"heart_rate": 2, "systolic_bp": 3, "diastolic_bp": 2, "spo2": 1, "resp_rate": 1,
             "temperature": 0.1}  # fmt: skip


def _title(v: str) -> str:
    name, unit = LABELS[v]
    return f"{name} ({unit})"


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def distributions(d: EdaData, out: Path) -> Path:
    m = d.minutes
    sample = m[m["group"].notna()].sample(min(200_000, int(m["group"].notna().sum())),
                                          random_state=0)  # fmt: skip
    sample = sample.assign(outcome=np.where(sample["group"] == 1, "deteriorated", "stayed well"))
    fig, axes = plt.subplots(2, 3, figsize=(14, 7.5))
    for ax, v in zip(axes.ravel(), VITALS, strict=True):
        band = news2_band(v)
        x = sample[v].dropna()
        lo, hi = np.nanpercentile(x, [0.5, 99.5]) if len(x) else (0, 1)
        if band is not None:
            ax.axvspan(max(band[0], lo), min(band[1], hi), color="#27ae60", alpha=0.12,
                       label="NEWS2 zero-score range")  # fmt: skip
        sns.histplot(data=sample.dropna(subset=[v]), x=v, hue="outcome", stat="density",
                     common_norm=False, element="step", fill=False, binwidth=BIN_WIDTH[v],
                     binrange=(lo, hi), palette=GROUP_COLORS, ax=ax)  # fmt: skip
        ax.set_xlabel(_title(v))
        ax.set_ylabel("density")
        ax.set_title(LABELS[v][0])
    handles: list[Artist] = [
        Line2D([], [], color=c, label=k) for k, c in list(GROUP_COLORS.items())[:2]
    ]
    handles.append(Patch(color="#27ae60", alpha=0.2, label="NEWS2 zero-score range"))
    for ax in axes.ravel():
        if ax.get_legend():
            ax.get_legend().remove()
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.legend(handles=handles, loc="upper center", ncol=3, frameon=False,
               bbox_to_anchor=(0.5, 0.965))  # fmt: skip
    fig.suptitle(f"Vital signs per patient-minute, by outcome within {d.horizon_hours:g} h")
    return _save(fig, out / "distributions.png")


def correlation(corr: pd.DataFrame, title: str, path: Path) -> Path:
    n = len(corr)
    fig, ax = plt.subplots(figsize=(0.55 * n + 3, 0.5 * n + 2))
    sns.heatmap(corr, vmin=-1, vmax=1, cmap="RdBu_r", annot=n <= 16, fmt=".2f",
                annot_kws={"size": 8}, square=True, ax=ax,
                cbar_kws={"label": "Spearman correlation"})  # fmt: skip
    ax.set_title(title)
    return _save(fig, path)


def outliers(table: pd.DataFrame, reasons: pd.DataFrame, out: Path) -> Path:
    fig, (a, b) = plt.subplots(1, 2, figsize=(14, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    t = table.melt(id_vars=["vital", "kind"], value_vars=["before", "after"], var_name="when",
                   value_name="values")  # fmt: skip
    t["label"] = t["kind"] + " · " + t["when"] + " cleaning"
    t = t[t.groupby("vital")["values"].transform("sum") > 0]
    pivot = t.pivot_table(index="vital", columns="label", values="values", aggfunc="sum")
    if len(pivot):
        pivot.plot.bar(ax=a, width=0.8, colormap="tab20")
        a.legend(fontsize=8, title="fault kind", title_fontsize=8)
    left = int(table["after"].sum())
    a.text(0.02, 0.95, f"values left after cleaning: {left:,}", transform=a.transAxes,
           va="top", fontsize=9)  # fmt: skip
    a.set_ylabel("values (count)")
    a.set_xlabel("vital sign")
    a.set_title("Faulty values before and after cleaning")
    a.tick_params(axis="x", rotation=0)
    top = reasons.head(10)
    if len(top):
        scope = top["scope"].map({"row": "event", "value": "value"}).fillna(top["scope"])
        b.barh(top["reason"] + " (" + scope + ")", top["records"], color="#7f8c8d")
        b.invert_yaxis()
    b.set_xlabel("quarantine records (count)")
    b.set_title("ETL quarantine reasons (event = whole event, value = one field)")
    fig.tight_layout()
    return _save(fig, out / "outliers.png")


def missingness(per_vital: pd.Series, by_hour: pd.DataFrame, co: pd.DataFrame, out: Path) -> Path:
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8), gridspec_kw={"width_ratios": [2, 3, 2.4]})
    names = [LABELS[v][0] for v in per_vital.index]
    axes[0].barh(names, per_vital.to_numpy() * 100, color="#8e44ad")
    axes[0].invert_yaxis()
    axes[0].set_xlabel("patient-minutes without a reading (%)")
    axes[0].set_title("Missing per vital (includes cadence)")
    sns.heatmap((by_hour.T * 100).set_axis(names, axis=0), cmap="Purples", ax=axes[1],
                cbar_kws={"label": "% minutes missing"})  # fmt: skip
    axes[1].set_xlabel("hour of day (UTC)")
    axes[1].set_title("Missing by hour of day")
    sns.heatmap(co.set_axis(names, axis=0).set_axis(names, axis=1), vmin=0, vmax=1,
                cmap="Purples", annot=True, fmt=".2f", annot_kws={"size": 8}, ax=axes[2],
                cbar_kws={"label": "P(column missing | row missing)"})  # fmt: skip
    axes[2].set_title("Co-missingness")
    fig.tight_layout()
    return _save(fig, out / "missingness.png")


def trajectories(traj: pd.DataFrame, horizon_hours: float, out: Path) -> Path:
    fig, axes = plt.subplots(2, 3, figsize=(14, 7.5), sharex=True)
    for ax, v in zip(axes.ravel(), VITALS, strict=True):
        for group, unsorted in traj[traj["vital"] == v].groupby("group"):
            g = unsorted.sort_values("hours_before")
            c = GROUP_COLORS.get(str(group), "#555")
            ax.plot(-g["hours_before"], g["median"], color=c, label=f"{group} (median)")
            ax.fill_between(-g["hours_before"], g["q1"], g["q3"], color=c, alpha=0.18,
                            label=f"{group} (IQR)")  # fmt: skip
        ax.axvline(-horizon_hours, color="#555", ls=":", lw=1)
        ax.set_title(LABELS[v][0])
        ax.set_ylabel(_title(v))
    for ax in axes[1]:
        ax.set_xlabel("hours before deterioration (controls: matched time of stay)")
    h, lab = axes[0, 0].get_legend_handles_labels()
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.legend(h, lab, loc="upper center", ncol=4, frameon=False, bbox_to_anchor=(0.5, 0.965))
    fig.suptitle(f"Trajectories before deterioration (dotted line: the {horizon_hours:g} h "
                 "prediction horizon)")  # fmt: skip
    return _save(fig, out / "trajectories.png")


def circadian(table: pd.DataFrame, out: Path) -> Path:
    fig, axes = plt.subplots(2, 3, figsize=(14, 6.5), sharex=True)
    for ax, v in zip(axes.ravel(), VITALS, strict=True):
        ax.plot(table.index, table[v], marker="o", ms=3, color="#16a085")
        ax.set_title(LABELS[v][0])
        ax.set_ylabel(f"mean {_title(v)}")
        ax.set_xticks(range(0, 24, 4))
        ax.set_xlim(-0.5, 23.5)
    for ax in axes[1]:
        ax.set_xlabel("hour of day (UTC)")
    fig.suptitle("Circadian pattern: mean per hour of day, patient-minutes that stayed well")
    fig.tight_layout()
    return _save(fig, out / "circadian.png")


def subgroups(table: pd.DataFrame, balance: dict[str, float], out: Path) -> Path:
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), gridspec_kw={"width_ratios": [1, 3, 3]})
    pos = balance["positive_minutes"]
    neg = balance["labelled_minutes"] - pos
    axes[0].bar(["stayed well", "deteriorated"], [neg, pos],
                color=[GROUP_COLORS["stayed well"], GROUP_COLORS["deteriorated"]])  # fmt: skip
    axes[0].set_ylabel("labelled patient-minutes")
    axes[0].set_title(f"Class balance ({balance['positive_share']:.1%} positive)")
    t = table.assign(name=table["subgroup"] + ": " + table["value"])
    axes[1].bar(t["name"], t["per_patient_day"].fillna(0), color="#d35400")
    axes[1].set_ylabel("deteriorations per patient-day")
    axes[1].set_title("Deterioration rate by subgroup")
    axes[2].bar(t["name"], t["positive_share"].fillna(0) * 100, color="#c0392b")
    axes[2].set_ylabel("positive share of labelled minutes (%)")
    axes[2].set_title("Label balance by subgroup")
    for ax in axes[1:]:
        ax.tick_params(axis="x", rotation=35)
        for lbl in ax.get_xticklabels():
            lbl.set_ha("right")
    fig.tight_layout()
    return _save(fig, out / "subgroups.png")
