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

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
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


AGG_COLUMNS = (*VITALS, "avpu_rank", "o2", *COUNT_COLUMNS, "n_events")
_NS_PER_MINUTE = 60_000_000_000


@dataclass(frozen=True)
class MinuteAggregate:
    """The within-minute aggregation as arrays, one row per observed (key, minute).

    Rows are ordered by key, then minute. ``values`` holds :data:`AGG_COLUMNS` in order:
    the vital medians, ``avpu_rank`` (worst, 0-4), ``o2`` (1.0 / 0.0 / NaN), the ``n_*``
    counts and ``n_events``.
    """

    key: npt.NDArray[np.int64]
    minute: npt.NDArray[np.int64]  # minutes since the epoch (UTC)
    values: npt.NDArray[np.float64]


def aggregate_minute_arrays(key: npt.NDArray[np.int64], events: pd.DataFrame) -> MinuteAggregate:
    """The within-minute aggregation of ``events`` grouped by integer ``key`` (numpy).

    One sort by (key, minute) forms the groups; a median is the middle of its group's
    readings sorted by value, the mean of the two middle ones for an even count, as
    pandas computes it, so both spellings give the same numbers.
    """
    ns = events["ts"].to_numpy("datetime64[ns]").astype(np.int64)
    minute = ns // _NS_PER_MINUTE
    n = len(minute)
    ordered = np.all((key[1:] > key[:-1]) | ((key[1:] == key[:-1]) & (minute[1:] >= minute[:-1])))
    order = np.arange(n) if ordered else np.lexsort((minute, key))  # the ETL's come sorted
    key, minute = key[order], minute[order]
    change = np.empty(n, dtype=bool)
    change[:1] = True
    change[1:] = (key[1:] != key[:-1]) | (minute[1:] != minute[:-1])
    starts = np.flatnonzero(change)
    sizes = np.diff(np.append(starts, n))
    group = np.cumsum(change) - 1

    vitals = events[list(VITALS)].to_numpy(dtype=np.float64)[order]
    rank = pd.Categorical(events["consciousness"], categories=AVPU, ordered=True).codes
    avpu = np.where(rank < 0, np.nan, rank).astype(np.float64)[order]
    o2 = events["on_oxygen"].astype("float64").to_numpy()[order]  # NaN when unknown

    out = np.empty((len(starts), len(AGG_COLUMNS)), dtype=np.float64)
    seen = ~np.isnan(vitals)
    counts = np.add.reduceat(seen, starts, axis=0) if n else np.zeros((0, len(VITALS)), int)
    # Most minutes hold one reading, its own median; only the others need sorting.
    out[:, : len(VITALS)] = vitals[starts]
    multi = np.flatnonzero(sizes > 1)
    rows = np.flatnonzero(sizes[group] > 1)  # grouped, in group order
    sub_starts = np.cumsum(sizes[multi]) - sizes[multi]
    for k in range(len(VITALS)):
        # Within each group, readings ascending and NaN last (NaN sorts after numbers).
        x = vitals[rows, k][np.lexsort((vitals[rows, k], group[rows]))]
        c = counts[multi, k]
        lo = sub_starts + np.maximum(c - 1, 0) // 2
        hi = sub_starts + c // 2
        out[multi, k] = np.where(c > 0, (x[hi] + x[lo]) / 2, np.nan)
    v = len(VITALS)
    out[:, v] = np.fmax.reduceat(avpu, starts) if n else avpu[:0]
    out[:, v + 1] = np.fmax.reduceat(o2, starts) if n else o2[:0]
    out[:, v + 2 : 2 * v + 2] = counts
    out[:, 2 * v + 2] = np.add.reduceat(~np.isnan(avpu), starts) if n else 0
    out[:, 2 * v + 3] = sizes
    return MinuteAggregate(key[starts], minute[starts], out)


def aggregate_minutes(events: pd.DataFrame, key: str = "patient_id") -> pd.DataFrame:
    """The within-minute aggregation alone (no grid, no fill), shared with the online path.

    Returns one row per observed (``key``, ``minute``) with the vital medians,
    ``avpu_rank`` (worst, as 0-4), ``o2`` (1.0 / 0.0 / NaN), ``n_*`` and ``n_events``.
    ``key`` names the patient column (the online state uses
    :func:`aggregate_minute_arrays` on its integer slots directly).
    """
    codes, uniques = pd.factorize(events[key], sort=True)
    agg = aggregate_minute_arrays(codes.astype(np.int64), events)
    index = pd.MultiIndex.from_arrays(
        [
            pd.Index(uniques.take(agg.key), name=key),
            pd.DatetimeIndex(agg.minute * _NS_PER_MINUTE, tz="UTC", name="minute"),
        ]
    )
    frame = pd.DataFrame(agg.values, index=index, columns=list(AGG_COLUMNS))
    counts = [*COUNT_COLUMNS, "n_events"]
    return frame.astype(dict.fromkeys(counts, np.int64))


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
    out["minute"] = pd.to_datetime(out["minute"], utc=True, cache=False).astype(
        "datetime64[us, UTC]"
    )
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
