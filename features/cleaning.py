"""Per-event cleaning of raw vital-sign events: one definition for the ETL and the scorer.

The batch ETL (Spark, per patient) and the online scorer (per poll batch, with carried
state) both call :func:`clean_events`, so the real-time path cleans exactly as the lake
does. Rules, applied in this order:

1. **Units.** A temperature between 86 and 113 is a reading in °F (30–45 °C) and is
   converted; ``fahrenheit:temperature`` is recorded as a *correction*.
2. **Impossible values.** Outside :data:`HARD_LIMITS` a value is not a physiological
   reading (sensor or firmware error): it is rejected (``impossible:<vital>``). A diastolic
   pressure at or above the systolic rejects both (``impossible:blood_pressure``).
3. **Motion artifacts.** A probe that slips reads an SpO2 of 0–50 for a moment, and ECG
   leads that move count spikes; neither is a crisis:
   - SpO2 below 50, or below 70 just after a normal SpO2 (≥ 85 within 10 minutes), while
     the heart rate in the same reading is not abnormal (40–140 or not measured), is an
     artifact (``artifact:spo2``) — a real desaturation that deep comes with a heart-rate
     response and does not happen between two one-minute readings;
   - a heart rate above 150 that jumps more than 50 bpm above the last plausible heart
     rate of the past 5 minutes is an artifact (``artifact:heart_rate``).
   "Previous" readings are the patient's own plausible readings *before* this event (never
   after it), carried across batches in :class:`CleaningState`, so a scorer that sees one
   event at a time decides as the batch job does.
4. **Row status.** An event whose every measured vital was rejected contributes nothing:
   it is ``quarantined`` with its reasons; otherwise it is ``ok`` with the rejected values
   removed (their reasons listed).

Input columns: ``patient_id``, ``ts`` (UTC), the six vitals, ``consciousness``,
``on_oxygen`` (any others pass through). Rows must be ordered by patient, then time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

VITALS = ("heart_rate", "systolic_bp", "diastolic_bp", "spo2", "resp_rate", "temperature")

# Physically possible ranges (°C for temperature). Wide on purpose: they catch broken
# sensors and entry errors, not sick patients; clinical bands are NEWS2's business.
# Temperature is the exception that needs care: below 33 °C or above 43 °C a ward reading
# is a misplaced probe or a unit error (0 °C sent as 32 °F reads like 32 °C), not a
# patient still on a ward.
HARD_LIMITS: dict[str, tuple[float, float]] = {
    "heart_rate": (20.0, 300.0),
    "systolic_bp": (40.0, 300.0),
    "diastolic_bp": (20.0, 200.0),
    "spo2": (0.0, 100.0),
    "resp_rate": (3.0, 80.0),
    "temperature": (33.0, 43.0),
}
FAHRENHEIT_BAND = (86.0, 113.0)
SPO2_ARTIFACT_ALWAYS = 50.0
SPO2_ARTIFACT_AFTER_NORMAL = 70.0
SPO2_NORMAL_BEFORE = 85.0
SPO2_CONTEXT = pd.Timedelta(minutes=10)
HR_NOT_ABNORMAL = (40.0, 140.0)
HR_SPIKE_ABOVE = 150.0
HR_SPIKE_JUMP = 50.0
HR_CONTEXT = pd.Timedelta(minutes=5)

STATUS_OK = "ok"
STATUS_QUARANTINED = "quarantined"


NO_TIME = np.iinfo(np.int64).min // 2  # "no previous reading" (ns): never recent
REF_VITALS = ("heart_rate", "spo2")  # the readings the artifact rules look back on


def _no_patients() -> pd.Index:
    return pd.Index([], name="patient_id", dtype="object")


@dataclass(frozen=True)
class CleaningState:
    """Per patient: the last plausible heart rate and SpO2 and when they were read.

    ``values`` has a row per patient and a column per :data:`REF_VITALS` (NaN: none yet);
    ``ts_ns`` the times in nanoseconds since the epoch (:data:`NO_TIME`: none yet).
    """

    patients: pd.Index = field(default_factory=_no_patients)
    values: np.ndarray = field(default_factory=lambda: np.empty((0, len(REF_VITALS))))
    ts_ns: np.ndarray = field(
        default_factory=lambda: np.empty((0, len(REF_VITALS)), dtype=np.int64)
    )

    def of(self, patients: pd.Index) -> tuple[np.ndarray, np.ndarray]:
        """Values and times for ``patients`` (none for a patient not held here)."""
        vals = np.full((len(patients), len(REF_VITALS)), np.nan)
        tss = np.full((len(patients), len(REF_VITALS)), NO_TIME, dtype=np.int64)
        if len(self.patients):
            at = self.patients.get_indexer(patients)
            known = at >= 0
            vals[known] = self.values[at[known]]
            tss[known] = self.ts_ns[at[known]]
        return vals, tss


@dataclass(frozen=True)
class _Groups:
    """Rows grouped by patient (contiguous runs): each row's run start and run ends."""

    codes: np.ndarray  # run number per row
    patients: pd.Index  # patient id per run
    row_start: np.ndarray  # first row of each row's run
    ends: np.ndarray  # last row of each run

    @classmethod
    def of(cls, pid: pd.Series) -> _Groups:
        codes, patients = pd.factorize(pid, sort=False)
        n = len(codes)
        first = np.ones(n, dtype=bool)
        first[1:] = codes[1:] != codes[:-1]
        starts = np.flatnonzero(first)
        if len(starts) != len(patients):
            raise ValueError(
                "clean_events needs its rows ordered by patient, then time "
                f"({len(patients)} patients are spread over {len(starts)} runs)"
            )
        row_start = np.repeat(starts, np.diff(np.append(starts, n)))
        ends = np.append(starts[1:], n) - 1 if n else starts  # no rows: no runs
        return cls(codes=codes, patients=pd.Index(patients), row_start=row_start, ends=ends)


def _previous(
    values: np.ndarray,
    ts_ns: np.ndarray,
    groups: _Groups,
    carried: np.ndarray,
    carried_ts: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Last non-null ``values`` strictly before each row, per patient, with its time (ns);
    before a patient's first one in the batch, the ``carried`` one (per run of rows)."""
    n = len(values)
    upto = np.maximum.accumulate(np.where(np.isnan(values), -1, np.arange(n)))
    before = np.empty(n, dtype=np.int64)
    before[:1] = -1
    before[1:] = upto[:-1]
    inside = before >= groups.row_start
    at = np.maximum(before, 0)
    prev = np.where(inside, values[at], np.nan)
    prev_ts = np.where(inside, ts_ns[at], NO_TIME)
    use = ~inside & ~np.isnan(carried[groups.codes])
    prev = np.where(use, carried[groups.codes], prev)
    prev_ts = np.where(use, carried_ts[groups.codes], prev_ts)
    return prev, prev_ts


def _ns(ts: pd.Series) -> np.ndarray:
    """Nanoseconds since the epoch; NaT as :data:`NO_TIME`."""
    out: np.ndarray = ts.to_numpy("datetime64[ns]").view(np.int64).copy()
    out[ts.isna().to_numpy()] = NO_TIME
    return out


def _between(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``lo <= x <= hi`` (inclusive, as ``Series.between``); NaN is never between."""
    return (x >= lo) & (x <= hi)


def reference_readings(heart_rate: np.ndarray, spo2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The readings that count as "previous plausible" context for the artifact rules.

    A pure function of each event's own values, so the context an event gives later events
    never depends on how the event itself was judged (and a carried state can be rebuilt
    from raw events alone). NaN where a reading does not count.
    """
    hr_ok = _between(heart_rate, HARD_LIMITS["heart_rate"][0], HR_SPIKE_ABOVE)
    spo2_ok = _between(spo2, SPO2_ARTIFACT_AFTER_NORMAL, HARD_LIMITS["spo2"][1])
    return np.where(hr_ok, heart_rate, np.nan), np.where(spo2_ok, spo2, np.nan)


def clean_events(
    events: pd.DataFrame, state: CleaningState | None = None
) -> tuple[pd.DataFrame, CleaningState]:
    """Apply the cleaning rules; returns the cleaned events and the state to carry on.

    The output has the input's columns (vitals cleaned, temperature in °C) plus
    ``status`` (``ok`` | ``quarantined``), ``corrections`` and ``rejections`` (comma-joined
    ``reason:field`` codes, empty when none). Plain numpy over the columns: the scorer
    calls this on every small poll, where per-call overhead is what counts.
    """
    state = state or CleaningState()
    out = events.copy()
    n = len(out)
    raw = {v: out[v].to_numpy(dtype=np.float64, na_value=np.nan) for v in VITALS}
    present_before = np.zeros(n, dtype=bool)
    for v in VITALS:
        present_before |= ~np.isnan(raw[v])
    corrections = np.full(n, "", dtype=object)
    rejections = np.full(n, "", dtype=object)

    def note(target: np.ndarray, m: np.ndarray, code: str) -> None:
        if m.any():
            target[m] = np.where(target[m] == "", code, target[m] + "," + code)

    vals = dict(raw)

    # 1. units
    temp = vals["temperature"]
    fahr = _between(temp, *FAHRENHEIT_BAND)
    vals["temperature"] = np.where(fahr, np.round((temp - 32.0) * 5.0 / 9.0, 2), temp)
    note(corrections, fahr, "fahrenheit:temperature")

    # 3a. artifacts need the plausible readings before each event (judged before limits
    # remove anything, so that context never depends on this event's own fate).
    hr_refs, spo2_refs = reference_readings(vals["heart_rate"], vals["spo2"])
    groups = _Groups.of(out["patient_id"])
    ts_ns = _ns(out["ts"])
    carried, carried_ts = state.of(groups.patients)
    prev_hr, prev_hr_ts = _previous(hr_refs, ts_ns, groups, carried[:, 0], carried_ts[:, 0])
    prev_spo2, prev_spo2_ts = _previous(spo2_refs, ts_ns, groups, carried[:, 1], carried_ts[:, 1])

    # 2. impossible values
    for v in VITALS:
        x = vals[v]
        bad = ~np.isnan(x) & ~_between(x, *HARD_LIMITS[v])
        vals[v] = np.where(bad, np.nan, x)
        note(rejections, bad, f"impossible:{v}")
    inverted = (vals["diastolic_bp"] >= vals["systolic_bp"]) & ~np.isnan(vals["systolic_bp"])
    for v in ("systolic_bp", "diastolic_bp"):
        vals[v] = np.where(inverted, np.nan, vals[v])
    note(rejections, inverted, "impossible:blood_pressure")

    # 3b. artifacts
    h = vals["heart_rate"]
    hr_ok = np.isnan(h) | _between(h, *HR_NOT_ABNORMAL)
    recent_normal = (prev_spo2 >= SPO2_NORMAL_BEFORE) & (ts_ns - prev_spo2_ts <= SPO2_CONTEXT.value)
    s = vals["spo2"]
    spo2_art = hr_ok & (
        (s < SPO2_ARTIFACT_ALWAYS) | ((s < SPO2_ARTIFACT_AFTER_NORMAL) & recent_normal)
    )
    vals["spo2"] = np.where(spo2_art, np.nan, s)
    note(rejections, spo2_art, "artifact:spo2")
    recent_hr = (ts_ns - prev_hr_ts) <= HR_CONTEXT.value
    hr_art = (h > HR_SPIKE_ABOVE) & recent_hr & ((h - prev_hr) > HR_SPIKE_JUMP)
    vals["heart_rate"] = np.where(hr_art, np.nan, h)
    note(rejections, hr_art, "artifact:heart_rate")

    present_after = np.zeros(n, dtype=bool)
    for v in VITALS:
        out[v] = vals[v]
        present_after |= ~np.isnan(vals[v])
    quarantined = present_before & ~present_after
    out["status"] = np.where(quarantined, STATUS_QUARANTINED, STATUS_OK)
    out["corrections"] = corrections
    out["rejections"] = rejections

    return out, _next_state(state, groups, ts_ns, hr_refs, spo2_refs)


def _next_state(
    state: CleaningState,
    groups: _Groups,
    ts_ns: np.ndarray,
    hr_ref: np.ndarray,
    spo2_ref: np.ndarray,
) -> CleaningState:
    """The state after these events: each patient's latest plausible SpO2 and heart rate."""
    vals, tss = state.of(groups.patients)
    for k, ref in enumerate((hr_ref, spo2_ref)):
        upto = np.maximum.accumulate(np.where(np.isnan(ref), -1, np.arange(len(ref))))
        at = upto[groups.ends]
        has = at >= groups.row_start[groups.ends]
        at = np.maximum(at, 0)
        vals[:, k] = np.where(has, ref[at], vals[:, k])
        tss[:, k] = np.where(has, ts_ns[at], tss[:, k])
    patients = groups.patients.rename("patient_id")
    others = ~state.patients.isin(patients)
    if not others.any():
        return CleaningState(patients, vals, tss)
    return CleaningState(
        state.patients[others].append(patients),
        np.concatenate([state.values[others], vals]),
        np.concatenate([state.ts_ns[others], tss]),
    )
