"""The numbers behind each section of the EDA report (pure: frames in, frames out)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.cleaning import FAHRENHEIT_BAND, HARD_LIMITS, SPO2_ARTIFACT_ALWAYS, VITALS
from features.news2 import zero_range
from pipelines.eda.data import EdaData

# What each vital is called on a chart, and its unit.
LABELS = {
    "heart_rate": ("Heart rate", "bpm"),
    "systolic_bp": ("Systolic BP", "mmHg"),
    "diastolic_bp": ("Diastolic BP", "mmHg"),
    "spo2": ("SpO₂", "%"),
    "resp_rate": ("Respiratory rate", "breaths/min"),
    "temperature": ("Temperature", "°C"),
}
# NEWS2 zero-score ranges (RCP 2017); SpO2 on scale 1 (scale-2 patients are few).
_NEWS2_KEY = {"heart_rate": "heart_rate", "systolic_bp": "systolic_bp", "spo2": "spo2_scale1",
              "resp_rate": "resp_rate", "temperature": "temperature"}  # fmt: skip
MAIN_FEATURES = (
    "heart_rate_last", "systolic_bp_last", "spo2_last", "resp_rate_last", "temperature_last",
    "news2_total", "shock_index", "mean_arterial_pressure", "heart_rate_slope_60m",
    "resp_rate_slope_60m", "spo2_min_60m", "heart_rate_delta_baseline", "age", "label",
)  # fmt: skip
AGE_BANDS = (0, 50, 65, 80, 200)
AGE_LABELS = ("<50", "50-64", "65-79", "80+")


def news2_band(vital: str) -> tuple[float, float] | None:
    """NEWS2 zero-score range of ``vital`` as (low, high) inclusive whole numbers, or None."""
    key = _NEWS2_KEY.get(vital)
    if key is None:
        return None
    lo, hi = zero_range(key)
    step = 0.1 if vital == "temperature" else 1.0
    return (lo + step if np.isfinite(lo) else -np.inf, hi)


def distributions(d: EdaData) -> pd.DataFrame:
    """Per vital and outcome group: readings, median, quartiles, share in the zero band."""
    m = d.minutes
    rows = []
    for v in VITALS:
        band = news2_band(v)
        for name, sel in (("all", m[v].notna()), ("deteriorated", m["group"] == 1),
                          ("stayed well", m["group"] == 0)):  # fmt: skip
            x = m.loc[sel.fillna(False).to_numpy(dtype=bool), v].dropna()
            in_band = float(((x >= band[0]) & (x <= band[1])).mean()) if band and len(x) else None
            rows.append({
                "vital": v, "group": name, "n": len(x),
                "median": float(x.median()) if len(x) else None,
                "q1": float(x.quantile(0.25)) if len(x) else None,
                "q3": float(x.quantile(0.75)) if len(x) else None,
                "in_news2_zero_band": in_band,
            })  # fmt: skip
    return pd.DataFrame(rows)


def correlations(d: EdaData) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Spearman correlations of the per-minute vitals, and of the main features."""
    vit = d.minutes[list(VITALS)].corr(method="spearman")
    feat = None
    if d.features is not None:
        cols = [c for c in MAIN_FEATURES if c in d.features]
        feat = d.features[cols].astype(float).corr(method="spearman")
    return vit, feat


def outliers(d: EdaData) -> pd.DataFrame:
    """Values per vital and fault kind before cleaning (raw) and after (processed)."""
    raw, mins = d.raw, d.minutes
    q = d.quarantine.assign(reason=d.quarantine["reason"].str.split(",")).explode("reason")
    q = q[q["reason"].notna() & (q["reason"] != "")]
    kind = q["reason"].str.split(":").str[0]
    field = q["reason"].str.split(":").str[1]
    rows = []
    for v in VITALS:
        lo, hi = HARD_LIMITS[v]
        r = raw[v].astype(float)
        p = mins[v].astype(float)
        fahr = (r >= FAHRENHEIT_BAND[0]) & (r <= FAHRENHEIT_BAND[1]) if v == "temperature" else (
            pd.Series(False, index=r.index))  # fmt: skip
        rows += [
            {"vital": v, "kind": "°F reading", "before": int(fahr.sum()),
             "after": int(((p >= FAHRENHEIT_BAND[0]) & (p <= FAHRENHEIT_BAND[1])).sum())
             if v == "temperature" else 0},
            {"vital": v, "kind": "impossible",
             "before": int(((r < lo) | (r > hi)).sum() - fahr.sum()),
             "after": int(((p < lo) | (p > hi)).sum())},
            {"vital": v, "kind": "artifact",
             "before": int(((kind == "artifact") & (field == v)).sum()),
             "after": int((p < SPO2_ARTIFACT_ALWAYS).sum()) if v == "spo2" else 0},
        ]  # fmt: skip
    return pd.DataFrame(rows)


def quarantine_reasons(d: EdaData) -> pd.DataFrame:
    """ETL quarantine records by reason and scope (a whole event or one value)."""
    q = d.quarantine.assign(reason=d.quarantine["reason"].str.split(",")).explode("reason")
    out = q.groupby(["reason", "scope"]).size().rename("records").reset_index()
    return out.sort_values("records", ascending=False).reset_index(drop=True)


def missingness(d: EdaData) -> tuple[pd.Series, pd.DataFrame, pd.DataFrame]:
    """Share of patient-minutes without a reading, per vital, per hour of day; co-missingness.

    Co-missingness is P(column vital missing | row vital missing) over patient-minutes.
    """
    m = d.minutes
    miss = pd.DataFrame({v: m[f"n_{v}"].fillna(0).to_numpy() == 0 for v in VITALS})
    per_vital = miss.mean()
    by_hour = miss.groupby(m["ts"].dt.hour.to_numpy()).mean()
    by_hour.index.name = "hour"
    a = miss.to_numpy(dtype=float)
    both = a.T @ a
    cond = both / np.maximum(np.diag(both)[:, None], 1)
    co = pd.DataFrame(cond, index=list(VITALS), columns=list(VITALS))
    return per_vital, by_hour, co


def trajectories(
    d: EdaData, hours: float = 12.0, step_minutes: int = 30, seed: int = 0
) -> pd.DataFrame:
    """Median and IQR of each vital over the hours before deterioration, and for controls.

    Cases are aligned on their first outcome. Each patient who never deteriorated is
    aligned on a pseudo-outcome at the same time since admission as a randomly drawn
    case (matched on length of stay so far), so both curves cover the same part of a stay.
    """
    m = d.minutes
    start = m.groupby("patient_id")["ts"].transform("min")
    first = d.outcomes.set_index("patient_id")["ts"]
    cases = m["patient_id"].isin(first.index)
    offsets = (first - m.loc[cases].groupby("patient_id")["ts"].min()).dropna()
    offsets = offsets[offsets > pd.Timedelta(0)]
    rng = np.random.default_rng(seed)
    controls = m.loc[~cases, "patient_id"].unique()
    out = []
    if len(offsets) and len(controls):
        pseudo = pd.Series(rng.choice(offsets.to_numpy(), len(controls)), index=controls)
        ctrl = m[~cases]
        t0 = ctrl["patient_id"].map(pseudo) + start[~cases]
        ctrl_h = (t0 - ctrl["ts"]).dt.total_seconds() / 3600
        out.append(("matched controls", ctrl, ctrl_h))
    case = m[cases]
    case_h = (case["patient_id"].map(first) - case["ts"]).dt.total_seconds() / 3600
    out.append(("deteriorated", case, case_h))
    rows = []
    for name, frame, h in out:
        keep = ((h > 0) & (h <= hours)).to_numpy()
        f = frame.loc[keep]
        b = (np.ceil(h[keep] * 60 / step_minutes) * step_minutes / 60).to_numpy()
        for v in VITALS:
            g = f[v].groupby(b)
            stats = g.quantile([0.25, 0.5, 0.75]).unstack()
            for hb, row in stats.iterrows():
                rows.append({"group": name, "vital": v, "hours_before": float(hb),
                             "q1": row[0.25], "median": row[0.5], "q3": row[0.75],
                             "patients": int(f.loc[b == hb, "patient_id"].nunique())})  # fmt: skip
    return pd.DataFrame(rows)


def circadian(d: EdaData) -> pd.DataFrame:
    """Mean of each vital by hour of day, in patient-minutes that stayed well.

    The mean, not the median: readings are mostly whole numbers, and a median of whole
    numbers moves in steps that hide a rhythm of a fraction of a unit.
    """
    m = d.minutes[d.minutes["group"] == 0]
    return m.groupby(m["ts"].dt.hour)[list(VITALS)].mean()


def subgroups(d: EdaData) -> pd.DataFrame:
    """Patients, deteriorations and label balance by age band, sex and SpO2 scale."""
    m = d.minutes
    per_patient = m.groupby("patient_id").agg(
        age=("age", "first"), sex=("sex", "first"), scale2=("scale2", "first"),
        minutes=("ts", "size"),
    )  # fmt: skip
    per_patient["deteriorated"] = per_patient.index.isin(d.outcomes["patient_id"])
    per_patient["age_band"] = pd.cut(per_patient["age"], AGE_BANDS, right=False,
                                     labels=AGE_LABELS)  # fmt: skip
    lab = m.loc[m["group"].notna(), ["patient_id", "group"]]
    pos = lab.groupby("patient_id")["group"].agg(["sum", "size"])
    per_patient = per_patient.join(pos)
    rows = []
    for col, label in (("age_band", "age band"), ("sex", "sex"), ("scale2", "SpO2 scale 2")):
        for value, g in per_patient.groupby(col, observed=True):
            days = g["minutes"].sum() / 1440
            rows.append({
                "subgroup": label, "value": str(value) if col != "scale2" else
                ("yes" if value == 1 else "no"),
                "patients": len(g), "deteriorated": int(g["deteriorated"].sum()),
                "per_patient_day": float(g["deteriorated"].sum() / days) if days else None,
                "positive_share": float(g["sum"].sum() / g["size"].sum()) if g["size"].sum()
                else None,
            })  # fmt: skip
    return pd.DataFrame(rows)


def class_balance(d: EdaData) -> dict[str, float]:
    g = d.minutes["group"]
    labelled = int(g.notna().sum())
    positive = int((g == 1).sum())
    return {
        "labelled_minutes": labelled,
        "positive_minutes": positive,
        "positive_share": positive / labelled if labelled else 0.0,
        "patients": d.patients,
        "deteriorated_patients": int(d.outcomes["patient_id"].isin(d.minutes["patient_id"]).sum()),
    }
