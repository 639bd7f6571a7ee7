"""Per-minute resampling of cleaned events: one row per patient per minute.

Aggregation within a minute (documented, shared by the ETL and the online path):

- each vital: the **median** of the minute's plausible readings (robust to one odd value);
- consciousness: the **worst** AVPU level assessed in the minute (A < C < V < P < U);
- on oxygen: **true** if any reading in the minute says so;
- ``n_<vital>`` / ``n_consciousness``: how many readings were observed (0 = carried);
- ``n_events``: events that contributed to the minute.

Minutes run from each patient's first to last event, gaps included. A gap is filled from
the last observed value for at most :data:`FFILL_MINUTES` minutes (bounded forward-fill:
a blood pressure is worth carrying for half an hour, a heart rate for five minutes); past
that the value is missing, as it is.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.cleaning import VITALS

AVPU = ("A", "C", "V", "P", "U")
FFILL_MINUTES: dict[str, int] = {
    "heart_rate": 5,
    "spo2": 5,
    "resp_rate": 5,
    "systolic_bp": 30,
    "diastolic_bp": 30,
    "temperature": 60,
    "consciousness": 90,
    "on_oxygen": 15,
}
COUNT_COLUMNS = tuple(f"n_{v}" for v in (*VITALS, "consciousness"))
MINUTE_COLUMNS = (
    "patient_id", "minute", *VITALS, "consciousness", "on_oxygen", *COUNT_COLUMNS, "n_events",
)  # fmt: skip


def aggregate_minutes(events: pd.DataFrame, key: str = "patient_id") -> pd.DataFrame:
    """The within-minute aggregation alone (no grid, no fill), shared with the online path.

    Returns one row per observed (``key``, ``minute``) with the vital medians,
    ``avpu_rank`` (worst, as 0-4), ``o2`` (1.0 / 0.0 / NaN), ``n_*`` and ``n_events``.
    ``key`` names the patient column (the online state groups by its integer slot).
    """
    df = events[[key, "ts", *VITALS, "consciousness", "on_oxygen"]].copy()
    df["minute"] = df["ts"].dt.floor("min")
    rank = pd.Categorical(df["consciousness"], categories=AVPU, ordered=True).codes
    df["avpu_rank"] = np.where(rank < 0, np.nan, rank)
    df["o2"] = df["on_oxygen"].astype("float64")  # NaN when unknown
    g = df.groupby([key, "minute"], sort=True)
    agg = g[list(VITALS)].median()
    counts = g[[*VITALS, "avpu_rank"]].count()
    agg["avpu_rank"] = g["avpu_rank"].max()
    agg["o2"] = g["o2"].max()
    for v in VITALS:
        agg[f"n_{v}"] = counts[v]
    agg["n_consciousness"] = counts["avpu_rank"]
    agg["n_events"] = g.size()
    return agg


def to_minutes(events: pd.DataFrame) -> pd.DataFrame:
    """One row per patient-minute from cleaned, usable events (any order).

    Args:
        events: ``patient_id``, ``ts`` (UTC), the vitals, ``consciousness``, ``on_oxygen``.

    Returns:
        Columns :data:`MINUTE_COLUMNS`, ordered by patient and minute.
    """
    if events.empty:
        return _empty()
    agg = aggregate_minutes(events)

    # The full minute grid per patient, then bounded forward-fill over the gaps.
    span = agg.reset_index().groupby("patient_id", sort=True)["minute"].agg(["min", "max"])
    first = span["min"].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy("datetime64[m]")
    last = span["max"].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy("datetime64[m]")
    lengths = (last - first).astype(np.int64) + 1
    starts = np.cumsum(lengths) - lengths
    offsets = np.arange(lengths.sum()) - np.repeat(starts, lengths)
    minutes = np.repeat(first, lengths) + offsets.astype("timedelta64[m]")
    grid = pd.MultiIndex.from_arrays(
        [np.repeat(span.index.to_numpy(), lengths), pd.DatetimeIndex(minutes).tz_localize("UTC")],
        names=["patient_id", "minute"],
    )
    agg.index = agg.index.set_levels(agg.index.levels[1].as_unit("ns"), level=1)
    full = agg.reindex(grid)
    by_patient = full.groupby(level="patient_id", sort=False)
    for col, key in [
        *((v, v) for v in VITALS),
        ("avpu_rank", "consciousness"),
        ("o2", "on_oxygen"),
    ]:
        full[col] = by_patient[col].ffill(limit=FFILL_MINUTES[key])
    for col in (*COUNT_COLUMNS, "n_events"):
        full[col] = full[col].fillna(0).astype("int16")

    out = full.reset_index()
    codes = out["avpu_rank"].to_numpy()
    out["consciousness"] = pd.Series(
        np.where(
            np.isnan(codes), None, np.array(AVPU, dtype=object)[np.nan_to_num(codes).astype(int)]
        ),
        dtype="object",
    )
    out["on_oxygen"] = out["o2"].map({1.0: True, 0.0: False}).astype("object")
    out["minute"] = pd.to_datetime(out["minute"], utc=True).astype("datetime64[us, UTC]")
    return out[list(MINUTE_COLUMNS)]


def _empty() -> pd.DataFrame:
    cols: dict[str, pd.Series] = {
        "patient_id": pd.Series(dtype="object"),
        "minute": pd.Series(dtype="datetime64[us, UTC]"),
    }
    for v in VITALS:
        cols[v] = pd.Series(dtype="float64")
    cols["consciousness"] = pd.Series(dtype="object")
    cols["on_oxygen"] = pd.Series(dtype="object")
    for c in (*COUNT_COLUMNS, "n_events"):
        cols[c] = pd.Series(dtype="int16")
    return pd.DataFrame(cols)[list(MINUTE_COLUMNS)]
