"""The ETL's row work, in pandas, for whole patients at a time.

:func:`transform_events` takes raw events of some patients, all of each patient's rows
sorted by time, and does in one pass what the ETL promises for them:

1. **Dedupe** by ``event_id``: the first landed copy wins (``landed_at``, then
   ``kafka_partition``, ``kafka_offset``; a missing value sorts first, as in Spark). A
   duplicate is a re-delivery of one event, so it shares the event's patient: the Spark
   job partitions by patient and every copy meets here.
2. **Time bounds**: an event timed after ``future`` (``ts_future``) or before
   ``too_old`` (``ts_too_old``) is quarantined as a row.
3. **Clean** the rest with :func:`features.cleaning.clean_events` (units, impossible
   values, artifacts), the function the scorer runs online.
4. **Resample** the usable events to one row per patient-minute with
   :func:`features.resample.to_minutes`.
5. **Quarantine** rows (bad times; events with nothing usable left) and values (each
   rejected reading of a usable event, with its raw value).
6. **Count**, per hour partition, what the reconciliation needs:
   ``raw_rows = source_rows + quarantined_rows + duplicates``.

Rows of hours outside ``pending`` are context (an hour's first minutes need the previous
hour's readings): they are cleaned and resampled with the rest, but neither output nor
counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa

from features.cleaning import STATUS_OK, STATUS_QUARANTINED, VITALS, clean_events
from features.resample import COUNT_COLUMNS, MINUTE_COLUMNS, to_minutes
from stack.catalog import partition_of

# What the job reads from the raw zone for this pass (the shuffle carries nothing else).
INPUT_COLUMNS = (
    "event_id", "patient_id", "ts", *VITALS, "consciousness", "on_oxygen",
    "landed_at", "kafka_partition", "kafka_offset",
)  # fmt: skip
COUNT_FIELDS = (
    "raw_rows", "source_rows", "quarantined_rows", "duplicates",
    "corrected_values", "rejected_values", "minute_rows",
)  # fmt: skip

_UTC = pa.timestamp("us", "UTC")
MINUTES_ARROW = pa.schema(
    [
        ("patient_id", pa.string()), ("minute", _UTC), *((v, pa.float64()) for v in VITALS),
        ("consciousness", pa.string()), ("on_oxygen", pa.bool_()),
        *((c, pa.int16()) for c in (*COUNT_COLUMNS, "n_events")),
    ]
)  # fmt: skip
QUARANTINE_ARROW = pa.schema(
    [
        ("run_id", pa.string()), ("event_id", pa.string()), ("patient_id", pa.string()),
        ("ts", _UTC), ("scope", pa.string()), ("field", pa.string()),
        ("raw_value", pa.string()), ("reason", pa.string()),
    ]
)  # fmt: skip
_NS_PER_HOUR = 3_600_000_000_000


@dataclass(frozen=True)
class Bounds:
    """What one run decides for every task: its hours, its clock bounds, its id."""

    pending: frozenset[str]
    future: pd.Timestamp
    too_old: pd.Timestamp
    run_id: str


@dataclass
class Transformed:
    """One call's output, for the pending hours only: ``partition`` → table, and counts."""

    minutes: dict[str, pa.Table]
    quarantine: dict[str, pa.Table]
    counts: dict[str, dict[str, int]]


def _partitions(ts_ns: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.intp], list[str]]:
    """Codes into a list of hour partitions, one per row (a few distinct hours per call)."""
    hours = ts_ns // _NS_PER_HOUR
    uniq, codes = np.unique(hours, return_inverse=True)
    names = [partition_of(np.datetime64(int(h), "h").item()) for h in uniq]
    return codes.reshape(-1), names


def _utc(col: pd.Series) -> pd.Series:
    # cache=False: deciding whether to cache makes Timestamp objects of the first 10,000
    # values (~7 ms a call), more than the conversion itself.
    return pd.to_datetime(col, utc=True, cache=False)


def _ns(utc: pd.Series) -> npt.NDArray[np.int64]:
    """Nanoseconds since the epoch of UTC times; a missing time is the smallest int64."""
    return np.asarray(utc.dt.as_unit("ns").array.asi8)


def _utc_ns(col: pd.Series) -> npt.NDArray[np.int64]:
    """Nanoseconds since the epoch; a missing time is the smallest int64 (sorts first)."""
    return _ns(_utc(col))


def duplicate_mask(events: pd.DataFrame) -> npt.NDArray[np.bool_]:
    """True for every copy of an ``event_id`` but the first landed one.

    An ``event_key`` column (a 64-bit hash of ``event_id``, which the Spark job adds with
    ``xxhash64``) narrows the search: only rows whose key repeats are compared by their
    ``event_id`` itself, so a hash collision costs a comparison, never a row. Without it
    the key is computed here.
    """
    n = len(events)
    dup = np.zeros(n, dtype=np.bool_)
    if n == 0:
        return dup
    if "event_key" in events:
        key = events["event_key"].to_numpy(dtype=np.int64)
    else:
        key = pd.util.hash_array(events["event_id"].to_numpy(dtype=object))
    maybe = np.flatnonzero(pd.Series(key).duplicated(keep=False).to_numpy())
    if len(maybe) == 0:
        return dup
    some = events.iloc[maybe]
    ids, _ = pd.factorize(some["event_id"], use_na_sentinel=False)
    order = np.lexsort(
        (
            some["kafka_offset"].to_numpy(dtype=np.int64, na_value=-1),
            some["kafka_partition"].to_numpy(dtype=np.int64, na_value=-1),
            _utc_ns(some["landed_at"]),
            ids,
        )
    )
    sorted_ids = ids[order]
    dup[maybe[order[1:]]] = sorted_ids[1:] == sorted_ids[:-1]
    return dup


def _n_codes(codes: npt.NDArray[np.object_]) -> npt.NDArray[np.int64]:
    """How many comma-joined codes each string holds ("" holds none)."""
    out = np.zeros(len(codes), dtype=np.int64)
    some = np.flatnonzero(codes != "")
    if len(some):
        out[some] = 1 + np.char.count(codes[some].astype(str), ",")
    return out


def format_raw(x: float) -> str | None:
    """A raw reading as text, as Spark casts a double: ``120.0``, ``1.0E7``, ``1.5E-4``."""
    if math.isnan(x):  # no reading
        return None
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    if x == 0 or 1e-3 <= abs(x) < 1e7:
        return repr(float(x))
    sign, digits, exp = Decimal(repr(float(x))).normalize().as_tuple()
    assert isinstance(exp, int)
    text = "".join(map(str, digits))
    mantissa = f"{text[0]}.{text[1:] or '0'}"
    return f"{'-' if sign else ''}{mantissa}E{len(text) + exp - 1}"


def _value_rows(cleaned: pd.DataFrame, raw: dict[str, npt.NDArray[np.float64]]) -> pd.DataFrame:
    """One row per rejected value of usable events: field, raw value, reason."""
    rej = cleaned["rejections"].to_numpy()
    rows = np.flatnonzero((cleaned["status"].to_numpy() == STATUS_OK) & (rej != ""))
    out: dict[str, list[object]] = {k: [] for k in ("i", "field", "raw_value", "reason")}
    for i in rows.tolist():
        for code in rej[i].split(","):
            fld = code.split(":", 1)[1]
            if fld == "blood_pressure":
                parts = (format_raw(raw["systolic_bp"][i]), format_raw(raw["diastolic_bp"][i]))
                value: str | None = "/".join(p for p in parts if p is not None)
            elif fld in raw:
                value = format_raw(raw[fld][i])
            else:
                value = None
            out["i"].append(i)
            out["field"].append(fld)
            out["raw_value"].append(value)
            out["reason"].append(code)
    idx = np.asarray(out["i"], dtype=np.int64)
    return pd.DataFrame(
        {
            "event_id": cleaned["event_id"].to_numpy()[idx],
            "patient_id": cleaned["patient_id"].to_numpy()[idx],
            "ts": cleaned["ts"].array[idx],
            "scope": "value",
            "field": pd.Series(out["field"], dtype=object),
            "raw_value": pd.Series(out["raw_value"], dtype=object),
            "reason": pd.Series(out["reason"], dtype=object),
            "_row": idx,
        }
    )


def _split(
    table: pa.Table, codes: npt.NDArray[np.intp], names: list[str], keep: set[str]
) -> dict[str, pa.Table]:
    """``table`` rows by partition code (rows of one code need not be contiguous)."""
    out: dict[str, pa.Table] = {}
    if table.num_rows == 0:
        return out
    order = np.argsort(codes, kind="stable")
    sorted_codes = codes[order]
    edges = np.flatnonzero(np.diff(sorted_codes)) + 1
    for lo, hi in zip([0, *edges.tolist()], [*edges.tolist(), len(order)], strict=True):
        name = names[int(sorted_codes[lo])]
        if name in keep:
            out[name] = table.take(pa.array(order[lo:hi])).replace_schema_metadata(None)
    return out


def _per_part(
    codes: npt.NDArray[np.intp],
    mask: npt.NDArray[np.bool_],
    n: int,
    weights: npt.NDArray[np.int64] | None = None,
) -> npt.NDArray[np.int64]:
    """Per partition code: how many rows ``mask`` selects (or the sum of their weights)."""
    w = None if weights is None else weights[mask]
    return np.bincount(codes[mask], weights=w, minlength=n).astype(np.int64)


def _row_frame(
    src: pd.DataFrame, rows: npt.NDArray[np.intp], reason: npt.NDArray[np.object_]
) -> pd.DataFrame:
    """Quarantine rows of scope ``row`` for ``src``'s rows ``rows``."""
    return pd.DataFrame(
        {
            "event_id": src["event_id"].to_numpy()[rows],
            "patient_id": src["patient_id"].to_numpy()[rows],
            "ts": _utc(src["ts"].iloc[rows]).array,
            "scope": "row",
            "field": None,
            "raw_value": None,
            "reason": reason,
        }
    )


def transform_events(events: pd.DataFrame, b: Bounds) -> Transformed:
    """Dedupe, bound, clean, resample and account for whole patients' raw events.

    ``events`` has :data:`INPUT_COLUMNS`, every row of each of its patients, ordered by
    patient, then time (then ``event_id``).
    """
    keep = set(b.pending)
    ts = _utc(events["ts"])  # converted once: partitions, bounds and cleaning use it
    ts_ns = _ns(ts)
    codes, names = _partitions(ts_ns)
    n = len(names)
    pending = np.isin(codes, [i for i, q in enumerate(names) if q in keep])

    dup = duplicate_mask(events)
    late = ~dup & (ts_ns > b.future.value)
    early = ~dup & (ts_ns < b.too_old.value) & ~late
    bad_time = late | early
    usable = ~dup & ~bad_time

    frame = events.loc[usable, ["event_id", "patient_id", *VITALS,
                                "consciousness", "on_oxygen"]].reset_index(drop=True)  # fmt: skip
    frame.insert(2, "ts", ts.array[usable])
    raw_values = {v: frame[v].to_numpy(dtype=np.float64, na_value=np.nan) for v in VITALS}
    cleaned, _state = clean_events(frame)
    c_codes, c_pending = codes[usable], pending[usable]
    status = cleaned["status"].to_numpy()
    ok, bad = status == STATUS_OK, status == STATUS_QUARANTINED

    # Counts per partition, of the pending rows.
    counted = {
        "raw_rows": _per_part(codes, pending, n),
        "duplicates": _per_part(codes, pending & dup, n),
        "quarantined_rows": _per_part(codes, pending & bad_time, n)
        + _per_part(c_codes, c_pending & bad, n),
        "source_rows": _per_part(c_codes, c_pending & ok, n),
        "corrected_values": _per_part(
            c_codes, c_pending, n, _n_codes(cleaned["corrections"].to_numpy())
        ),
        "rejected_values": _per_part(
            c_codes, c_pending, n, _n_codes(cleaned["rejections"].to_numpy())
        ),
    }
    counts = {
        q: {k: int(v[i]) for k, v in counted.items()} | {"minute_rows": 0}
        for i, q in enumerate(names)
        if q in keep
    }

    # Minutes of the pending hours (an hour with no event of these patients can still
    # hold their minutes: the grid and its forward-fill run across gaps).
    minutes_out: dict[str, pa.Table] = {}
    if ok.any():
        minutes = to_minutes(cleaned[ok])
        m_codes, m_names = _partitions(_utc_ns(minutes["minute"]))
        table = pa.Table.from_pandas(
            minutes[list(MINUTE_COLUMNS)], schema=MINUTES_ARROW, preserve_index=False
        )
        minutes_out = _split(table, m_codes, m_names, keep)
        for q, t in minutes_out.items():
            counts.setdefault(q, dict.fromkeys(COUNT_FIELDS, 0))["minute_rows"] += t.num_rows

    # Quarantine of the pending hours: bad times, unusable events, rejected values.
    bt = np.flatnonzero(pending & bad_time)
    qb = np.flatnonzero(c_pending & bad)
    values = _value_rows(cleaned, raw_values)
    values = values[c_pending[values["_row"].to_numpy()]]
    parts = [
        _row_frame(events, bt, np.where(late[bt], "ts_future", "ts_too_old").astype(object)),
        _row_frame(cleaned, qb, cleaned["rejections"].to_numpy()[qb]),
        values.drop(columns="_row"),
    ]
    q_codes = np.concatenate([codes[bt], c_codes[qb], c_codes[values["_row"].to_numpy()]])
    quarantine_out: dict[str, pa.Table] = {}
    if len(q_codes):
        frame_q = pd.concat([p for p in parts if len(p)], ignore_index=True)
        frame_q.insert(0, "run_id", b.run_id)
        table = pa.Table.from_pandas(
            frame_q[QUARANTINE_ARROW.names],
            schema=QUARANTINE_ARROW,
            preserve_index=False,
            safe=False,  # nanosecond input times are cut to microseconds, as Spark stores them
        )
        quarantine_out = _split(table, q_codes.astype(np.intp), names, keep)
    return Transformed(minutes_out, quarantine_out, counts)
