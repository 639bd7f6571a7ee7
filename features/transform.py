"""The feature transform: one function, :func:`compute`, for the batch job and the scorer.

Both paths hand :func:`compute` the same thing — for each (patient, as-of minute) the
exact window sums of :class:`WindowStats`, the carried values at the as-of minute, the
stay's age and the patient's admission facts — and get the same numbers back. How they
get the sums differs: the batch job takes differences of prefix sums over a patient's
processed minutes (:func:`dense_stats`, via :func:`features_for_patient`); the scorer
adds up per-block totals kept as events arrive (``features.online``), so a vector costs
the same whatever the window. Every minute value is first put on a 0.01 grid
(:func:`quantize`): sums of integers are exact, so the two give the same bits, and a
flat window has a standard deviation of exactly zero.

Definitions (all over *observed* minutes, i.e. minutes with at least one plausible
reading; carried values count only for ``*_last`` and what is derived from them):

- ``*_last``: the value carried to the as-of minute by the bounded forward-fill of
  ``features.resample`` (NaN once the carry limit has passed);
- ``*_age_min``: minutes from the last observed minute to the as-of minute (NaN if none
  in the window);
- window mean, sample s.d. (NaN below two observations), min, max and the count of
  observed minutes, per window;
- slope: least squares of value on time (per hour) over the window's observed minutes;
- baseline: mean over the observed minutes of the first four hours of the stay (only those
  up to the as-of minute while the stay is younger than that); ``*_delta_baseline`` is the
  latest value minus it;
- shock index, MAP and pulse pressure from the latest values; NEWS2 and qSOFA from the
  latest values and the chart's SpO2 scale (``features.news2``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

from features.news2 import NEWS2_PARAMETERS, news2, qsofa
from features.resample import AVPU, FFILL_MINUTES
from features.spec import (
    BASELINE_MINUTES,
    CHANNELS,
    FEATURE_NAMES,
    LATEST,
    SLOPE_WINDOWS,
    STAT_VITALS,
    STAT_WINDOWS,
    STATIC,
    WINDOW_MINUTES,
)

F = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
W = WINDOW_MINUTES
V = len(STAT_VITALS)
_STAT_IDX = [CHANNELS.index(v) for v in STAT_VITALS]
_COL = {name: i for i, name in enumerate(FEATURE_NAMES)}
# Carry limits (minutes) per LATEST entry, the resampler's bounded forward-fill.
CARRY_LIMITS = np.array(
    [FFILL_MINUTES["consciousness" if c == "avpu" else c] for c in LATEST], dtype=np.int64
)
SCALE = 100  # every minute value is put on a 0.01 grid before any statistic


def quantize(values: F) -> F:
    """Values on the 0.01 grid, as exact integers (in units of 0.01); NaN stays NaN.

    The grid is what lets the online state keep *exact* running sums: window sums of
    integers do not depend on the order they were added in, so the batch job's prefix
    sums and the scorer's block sums give the same bits. 0.01 is finer than any bedside
    reading (vitals are charted to 1 bpm, 1 mmHg, 1 %, 0.1 °C).
    """
    out: F = np.rint(np.asarray(values, dtype=np.float64) * SCALE)
    return out


@dataclass(frozen=True)
class WindowStats:
    """What the transform needs for each (patient, as-of minute) row: exact window sums.

    Sums run over a vital's *observed* minutes (``q`` = the quantised minute value, ``t``
    = minute minus the as-of minute, so ``t <= 0``); ``[rows, window, vital]`` arrays
    follow :data:`~features.spec.STAT_WINDOWS` (``st``/``stt``/``stq``:
    :data:`~features.spec.SLOPE_WINDOWS`) and :data:`~features.spec.STAT_VITALS`.
    Both paths build it: the batch job from prefix sums over the stay
    (:func:`dense_stats`), the scorer from per-block totals of its ring
    (``features.online``); :func:`compute` turns it into features.
    """

    n: I64  # observed minutes
    s: I64  # Σ q
    s2: I64  # Σ q²
    lo: F  # min q (NaN when none)
    hi: F  # max q (NaN when none)
    st: I64  # Σ t
    stt: I64  # Σ t²
    stq: I64  # Σ t·q
    age: F  # [rows, len(CHANNELS)]: minutes since last observed in the longest window, or NaN
    latest: F  # [rows, len(LATEST)]: quantised carried value (bounded forward-fill), or NaN
    base_n: I64  # [rows, vital]: observed minutes of the baseline (the stay's first hours
    base_s: I64  # up to the as-of minute) and Σ q over them


# The window-sum kernel both paths share. A window's statistics are sums over its
# observed minutes of the moments (n, Σq, Σq², Σt, Σt², Σt·q), t a minute's time: the
# batch path takes differences of prefix sums of :func:`minute_moments`, the online
# state sums the same moments per block (``features.online._block_sums``, a matrix
# product over a block's minutes, checked equal to summing these by a unit test); both
# move the time origin to the as-of minute with :func:`shift_moments` and hand the
# totals to :func:`window_stats`.
MOMENTS = ("n", "s", "s2", "st", "stt", "stq")


def minute_moments(q: F, t: I64) -> I64:
    """Per minute ``[..., 6, V]``: (seen, q, q², t·seen, t², t·q) of the quantised values
    ``q`` (``[..., V]``, NaN where not observed) at integer times ``t`` (``[..., 1]``)."""
    seen = ~np.isnan(q)
    qi = np.where(seen, q, 0.0).astype(np.int64)
    pi = seen.astype(np.int64)
    out: I64 = np.stack([pi, qi, qi * qi, t * pi, t * t * pi, t * qi], axis=-2)
    return out


def shift_moments(m: I64, c: I64) -> I64:
    """Moments ``[..., 6, V]`` with every t moved to t + ``c`` (shaped like the leading
    axes), exactly: Σ(t+c) = Σt + c·n, Σ(t+c)² = Σt² + 2c·Σt + c²·n, Σ(t+c)q = Σtq + c·Σq."""
    c = c[..., None]
    n, sq, t1 = m[..., 0, :], m[..., 1, :], m[..., 3, :]
    out: I64 = np.stack(
        [n, sq, m[..., 2, :], t1 + c * n, m[..., 4, :] + 2 * c * t1 + c * c * n,
         m[..., 5, :] + c * sq], axis=-2,
    )  # fmt: skip
    return out


def window_stats(
    totals: I64, lo: F, hi: F, *, age: F, latest: F, base_n: I64, base_s: I64
) -> WindowStats:
    """:class:`WindowStats` from the moments of each window (``[rows, W, 6, V]``, t relative
    to the as-of minute) and the rest of what :func:`compute` reads."""
    k = [STAT_WINDOWS.index(w) for w in SLOPE_WINDOWS]
    return WindowStats(
        n=totals[:, :, 0], s=totals[:, :, 1], s2=totals[:, :, 2], lo=lo, hi=hi,
        st=totals[:, k, 3], stt=totals[:, k, 4], stq=totals[:, k, 5],
        age=age, latest=latest, base_n=base_n, base_s=base_s,
    )  # fmt: skip


def compute(stats: WindowStats, stay_minutes: F, static: F) -> F:
    """Feature matrix ``[rows, len(FEATURE_NAMES)]``.

    Args:
        stats: the window sums of each row (:class:`WindowStats`).
        stay_minutes: ``[rows]`` as-of minute minus the stay's first usable minute.
        static: ``[rows, len(STATIC)]`` admission facts (NaN when unknown).
    """
    rows = len(stay_minutes)
    out = np.full((rows, len(FEATURE_NAMES)), np.nan)

    def put(name: str, values: F) -> None:
        out[:, _COL[name]] = values

    latest = stats.latest / SCALE
    for i, v in enumerate(LATEST):
        put(f"{v}_last", latest[:, i])
    for i, v in enumerate(CHANNELS):
        put(f"{v}_age_min", stats.age[:, i])

    with np.errstate(invalid="ignore", divide="ignore"):
        n = stats.n.astype(np.float64)
        mean = stats.s / n / SCALE
        # n·Σq² − (Σq)² is exact in integers: no cancellation, a constant window is 0.
        var = (stats.n * stats.s2 - stats.s * stats.s).astype(np.float64) / (n * (n - 1))
        std = np.sqrt(var) / SCALE
        std[stats.n < 2] = np.nan
        lo, hi = stats.lo / SCALE, stats.hi / SCALE
        for k, w in enumerate(STAT_WINDOWS):
            for j, v in enumerate(STAT_VITALS):
                put(f"{v}_mean_{w}m", mean[:, k, j])
                put(f"{v}_std_{w}m", std[:, k, j])
                put(f"{v}_min_{w}m", lo[:, k, j])
                put(f"{v}_max_{w}m", hi[:, k, j])
                put(f"{v}_n_{w}m", n[:, k, j])
        for k, w in enumerate(SLOPE_WINDOWS):
            cnt = stats.n[:, STAT_WINDOWS.index(w)]
            s = stats.s[:, STAT_WINDOWS.index(w)]
            sxy = cnt * stats.stq[:, k] - stats.st[:, k] * s  # n² × covariance, exact
            sxx = cnt * stats.stt[:, k] - stats.st[:, k] * stats.st[:, k]
            slope = sxy.astype(np.float64) / sxx.astype(np.float64) * (60.0 / SCALE)
            slope[(cnt < 2) | (sxx <= 0)] = np.nan
            for j, v in enumerate(STAT_VITALS):
                put(f"{v}_slope_{w}m", slope[:, j])

        bmean = stats.base_s / stats.base_n.astype(np.float64) / SCALE
        bmean[stats.base_n == 0] = np.nan
        for j, v in enumerate(STAT_VITALS):
            put(f"{v}_delta_baseline", latest[:, LATEST.index(v)] - bmean[:, j])

        def last(v: str) -> F:
            return latest[:, LATEST.index(v)]

        put("shock_index", last("heart_rate") / last("systolic_bp"))
        put("mean_arterial_pressure", (last("systolic_bp") + 2 * last("diastolic_bp")) / 3)
        put("pulse_pressure", last("systolic_bp") - last("diastolic_bp"))

    scale2 = static[:, STATIC.index("spo2_scale2")]
    score = news2(
        resp_rate=last("resp_rate"),
        spo2=last("spo2"),
        on_oxygen=last("on_oxygen"),
        systolic_bp=last("systolic_bp"),
        heart_rate=last("heart_rate"),
        avpu_rank=last("avpu"),
        temperature=last("temperature"),
        scale2=scale2,
    )
    for param in NEWS2_PARAMETERS:
        put(f"news2_{param}", score[param])
    put("news2_total", score["total"])
    put("news2_missing", score["missing"])
    put("news2_red", score["red"])
    put("news2_tier", score["tier"])
    q = qsofa(resp_rate=last("resp_rate"), systolic_bp=last("systolic_bp"), avpu_rank=last("avpu"))
    for crit in ("resp_rate", "systolic_bp", "mentation", "score"):
        put(f"qsofa_{crit}", q[crit])
    put("stay_minutes", stay_minutes)
    for i, name in enumerate(STATIC):
        put(name, static[:, i])
    return out


def _sliding(x: F, w: int, rows: I64, how: np.ufunc) -> F:
    """``how`` (``np.fmin``/``np.fmax``: NaN ignored) over ``x[r-w+1 .. r]`` for each row.

    Blocks of ``w`` rows, each with its running value from the start and from the end:
    a window meets at most two blocks, the end of one and the start of the next, so each
    row is two lookups (van Herk / Gil-Werman) — linear in the stay, whatever ``w``.
    """
    n, v = x.shape
    total = -(-(n + w - 1) // w) * w
    padded = np.full((total, v), np.nan)
    padded[w - 1 : w - 1 + n] = x  # padded index of x[i] is i + w - 1
    blocks = padded.reshape(-1, w, v)
    forward = how.accumulate(blocks, axis=1).reshape(total, v)
    backward = how.accumulate(blocks[:, ::-1], axis=1)[:, ::-1].reshape(total, v)
    start, end = rows, rows + w - 1  # the window of row r, in padded indices
    out: F = np.where((start % w == 0)[:, None], forward[end], how(backward[start], forward[end]))
    return out


def dense_stats(obs: F, carried: F, rows: I64) -> WindowStats:
    """:class:`WindowStats` at positions ``rows`` of one patient's dense minute arrays.

    Args:
        obs: ``[length, len(CHANNELS)]`` observed minute values from the stay's first
            usable minute on (NaN where not observed).
        carried: ``[length, len(LATEST)]`` carried (bounded forward-filled) values.
        rows: as-of positions (minutes since the stay's first usable minute).

    Window sums are differences of exact integer prefix sums, so the cost is one pass over
    the stay whatever the windows; min and max are taken over sliding views.
    """
    length = len(obs)
    q = quantize(obs[:, _STAT_IDX])  # [length, V]
    t = np.arange(length, dtype=np.int64)[:, None]
    mom = minute_moments(q, t)  # [length, 6, V], t from the stay's first minute
    cum = np.concatenate([np.zeros((1, 6, V), dtype=np.int64), np.cumsum(mom, axis=0)])
    end = rows + 1
    totals = np.stack([cum[end] - cum[np.maximum(end - w, 0)] for w in STAT_WINDOWS], axis=1)
    totals = shift_moments(totals, np.broadcast_to(-rows[:, None], totals.shape[:2]))

    lo = np.empty((len(rows), len(STAT_WINDOWS), V))
    hi = np.empty_like(lo)
    for k, w in enumerate(STAT_WINDOWS):
        lo[:, k] = _sliding(q, w, rows, np.fmin)
        hi[:, k] = _sliding(q, w, rows, np.fmax)

    r = rows[:, None]
    observed = ~np.isnan(obs)
    last_seen = np.maximum.accumulate(np.where(observed, t, -1), axis=0)[rows]
    age = (r - last_seen).astype(np.float64)
    age[(last_seen < 0) | (age > W - 1)] = np.nan

    upto = np.minimum(rows, BASELINE_MINUTES - 1) + 1
    return window_stats(
        totals, lo, hi, age=age, latest=quantize(carried[rows]),
        base_n=cum[upto, 0], base_s=cum[upto, 1],
    )  # fmt: skip


# --------------------------------------------------------------------------- batch side
def _avpu_rank(letters: pd.Series) -> F:
    codes: F = pd.Categorical(letters, categories=AVPU, ordered=True).codes.astype(np.float64)
    codes[codes < 0] = np.nan
    return codes


def static_vector(admission: dict[str, object] | None) -> F:
    """``[age, female, spo2_scale2]`` from an admission row (NaN when unknown)."""
    if not admission:
        return np.array([np.nan, np.nan, 0.0])
    age = admission.get("age")
    sex = admission.get("sex")
    scale = admission.get("spo2_scale")
    return np.array(
        [
            float(age) if age is not None and not pd.isna(age) else np.nan,  # type: ignore[arg-type]
            np.nan if sex not in ("F", "M") else float(sex == "F"),
            1.0 if scale == 2 else 0.0,
        ]
    )


def is_cadence_minute(epoch_minutes: npt.NDArray[np.int64], cadence: int) -> npt.NDArray[np.bool_]:
    """As-of minutes whose feature time (minute + 1) falls on the cadence grid."""
    return np.asarray((epoch_minutes + 1) % cadence == 0, dtype=np.bool_)


def features_for_patient(
    minutes: pd.DataFrame,
    static: F,
    *,
    cadence_minutes: int,
    since: pd.Timestamp | None = None,
) -> pd.DataFrame:
    """Feature rows for one patient's processed minutes (``features.resample`` columns).

    ``minutes`` holds the patient's rows from the first minute of the stay on (anything
    earlier is needed for the baseline); rows are emitted for as-of minutes on the cadence
    grid, from ``since`` on when given. Returns ``patient_id``, ``ts`` (as-of minute + 1
    minute) and :data:`FEATURE_NAMES`.
    """
    ts, values = patient_feature_arrays(
        minutes, static, cadence_minutes=cadence_minutes, since=since
    )
    return _frame(minutes["patient_id"].iloc[0], ts, values)


def patient_feature_arrays(
    minutes: pd.DataFrame,
    static: F,
    *,
    cadence_minutes: int,
    since: pd.Timestamp | None = None,
) -> tuple[npt.NDArray[np.datetime64], F]:
    """:func:`features_for_patient` as arrays: feature times ``[rows]`` (``datetime64[m]``,
    UTC) and values ``[rows, len(FEATURE_NAMES)]``, for callers that build their own table.
    """
    m = minutes if minutes["minute"].is_monotonic_increasing else minutes.sort_values("minute")
    mins = m["minute"].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy("datetime64[m]")
    epoch = mins.astype(np.int64)
    first = int(epoch[0])
    pos = epoch - first
    length = int(pos[-1]) + 1

    # Dense [length, C] arrays over the stay's minutes (NaN where a row is missing).
    obs = np.full((length, len(CHANNELS)), np.nan)
    carried = np.full((length, len(LATEST)), np.nan)
    avpu = _avpu_rank(m["consciousness"])
    for i, c in enumerate(CHANNELS):
        if c == "avpu":
            value, count = avpu, m["n_consciousness"].to_numpy()
        else:
            value, count = m[c].to_numpy(dtype=np.float64), m[f"n_{c}"].to_numpy()
        obs[pos, i] = np.where(count > 0, value, np.nan)
        carried[pos, i] = value
    o2 = m["on_oxygen"].to_numpy()  # True / False / None (unknown)
    carried[pos, LATEST.index("on_oxygen")] = np.where(
        np.equal(o2, True), 1.0, np.where(np.equal(o2, False), 0.0, np.nan)
    )

    keep = is_cadence_minute(epoch, cadence_minutes)
    if since is not None:
        start = since.tz_localize("UTC") if since.tzinfo is None else since.tz_convert("UTC")
        keep &= epoch >= start.value // 60_000_000_000
    rows = pos[keep]
    if len(rows) == 0:
        return np.array([], dtype="datetime64[m]"), np.empty((0, len(FEATURE_NAMES)))

    values = compute(
        dense_stats(obs, carried, rows),
        rows.astype(np.float64),
        np.broadcast_to(static, (len(rows), len(STATIC))),
    )
    return mins[keep] + np.timedelta64(1, "m"), values


def _frame(pid: str, ts: npt.NDArray[np.datetime64], values: F) -> pd.DataFrame:
    keys = pd.DataFrame(
        {
            "patient_id": pd.Series([pid] * len(ts), dtype="object"),
            "ts": pd.DatetimeIndex(ts).tz_localize("UTC").astype("datetime64[us, UTC]"),
        }
    )
    values_frame = pd.DataFrame(values, columns=list(FEATURE_NAMES), copy=False)
    return pd.concat([keys, values_frame], axis=1, copy=False)
