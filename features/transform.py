"""The feature transform: one function, :func:`compute`, for the batch job and the scorer.

Both paths hand :func:`compute` the same thing — for each (patient, as-of minute) the
patient's last :data:`~features.spec.WINDOW_MINUTES` minutes of observed per-minute
values, the carried values at the as-of minute, the first hours of the stay and the
patient's admission facts — and get the same numbers back. How they build those arrays
differs (the batch job slides over a patient's processed minutes, see
:func:`features_for_patient`; the online state keeps a ring of minutes, see
``features.online``); what is computed from them is this module alone.

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
W = WINDOW_MINUTES
_STAT_IDX = [CHANNELS.index(v) for v in STAT_VITALS]
_COL = {name: i for i, name in enumerate(FEATURE_NAMES)}
# Carry limits (minutes) per LATEST entry, the resampler's bounded forward-fill.
CARRY_LIMITS = np.array(
    [FFILL_MINUTES["consciousness" if c == "avpu" else c] for c in LATEST], dtype=np.int64
)


def last_observed(window: F) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """Per channel of ``window`` ([n, W, C]): positions back from the end to the last
    non-NaN value, and whether there is one at all."""
    rev = ~np.isnan(window[:, ::-1, :])
    back: npt.NDArray[np.int64] = rev.argmax(axis=1)
    seen: npt.NDArray[np.bool_] = np.asarray(rev.any(axis=1))
    return back, seen


def carry_forward(window: F, limits: npt.NDArray[np.int64]) -> F:
    """Value at the last position of ``window`` ([n, W, C]) after a bounded forward-fill."""
    age, any_ = last_observed(window)
    n, w, c = window.shape
    last = window[np.arange(n)[:, None], w - 1 - age, np.arange(c)[None, :]]
    return np.where(any_ & (age <= limits[None, :]), last, np.nan)


def compute(
    obs: F,
    latest: F,
    stay_minutes: F,
    baseline_obs: F,
    static: F,
) -> F:
    """Feature matrix ``[n, len(FEATURE_NAMES)]``.

    Args:
        obs: ``[n, WINDOW_MINUTES, len(CHANNELS)]`` observed minute values, oldest first;
            the last row is the as-of minute; NaN where not observed.
        latest: ``[n, len(LATEST)]`` carried values at the as-of minute.
        stay_minutes: ``[n]`` as-of minute minus the stay's first usable minute.
        baseline_obs: ``[n, BASELINE_MINUTES, len(STAT_VITALS)]`` observed values of the
            stay's first minutes, from its first usable minute on.
        static: ``[n, len(STATIC)]`` admission facts (NaN when unknown).
    """
    n = obs.shape[0]
    out = np.full((n, len(FEATURE_NAMES)), np.nan)

    def put(name: str, values: F) -> None:
        out[:, _COL[name]] = values

    for i, v in enumerate(LATEST):
        put(f"{v}_last", latest[:, i])

    back, seen = last_observed(obs)
    age = back.astype(np.float64)
    age[~seen] = np.nan
    for i, v in enumerate(CHANNELS):
        put(f"{v}_age_min", age[:, i])

    # Window statistics. The windows nest (15 ⊂ 60 ⊂ 240 minutes back from the as-of
    # minute), so each quantity is summed once per segment between window starts and the
    # segments accumulated: every minute is touched once per quantity. Time runs along
    # the last, contiguous axis. Squares are taken around the 240-minute mean, so the
    # variance does not cancel catastrophically.
    x = np.ascontiguousarray(obs[:, :, _STAT_IDX].transpose(0, 2, 1))  # [n, vitals, W]
    p = ~np.isnan(x)
    pf = p.astype(np.float64)
    x0 = np.where(p, x, 0.0)
    t = np.arange(W, dtype=np.float64)

    def by_window(a: F, how: str = "sum") -> dict[int, F]:
        out: dict[int, F] = {}
        acc: F | None = None
        end = W
        for w in STAT_WINDOWS:
            seg = a[..., W - w : end]
            part = seg.sum(axis=-1) if how == "sum" else getattr(seg, how)(axis=-1)
            if acc is None:
                acc = part
            elif how == "sum":
                acc = acc + part
            elif how == "min":
                acc = np.minimum(acc, part)
            else:
                acc = np.maximum(acc, part)
            out[w] = acc
            end = W - w
        return out

    with np.errstate(invalid="ignore", divide="ignore"):
        cnt_w = by_window(pf)
        sum_w = by_window(x0)
        longest = STAT_WINDOWS[-1]
        shift = sum_w[longest] / cnt_w[longest]
        shift = np.where(np.isnan(shift), 0.0, shift)
        dev0 = np.where(p, x - shift[:, :, None], 0.0)
        sq_w = by_window(dev0 * dev0)
        lo_w = by_window(np.where(p, x, np.inf), "min")
        hi_w = by_window(np.where(p, x, -np.inf), "max")
        for w in STAT_WINDOWS:
            cnt = cnt_w[w]
            mean = sum_w[w] / cnt
            dm = mean - shift
            std = np.sqrt(np.maximum((sq_w[w] - cnt * dm * dm) / (cnt - 1), 0.0))
            std[cnt < 2] = np.nan
            lo, hi = lo_w[w].copy(), hi_w[w].copy()
            none = cnt == 0
            lo[none] = np.nan
            hi[none] = np.nan
            for j, v in enumerate(STAT_VITALS):
                put(f"{v}_mean_{w}m", mean[:, j])
                put(f"{v}_std_{w}m", std[:, j])
                put(f"{v}_min_{w}m", lo[:, j])
                put(f"{v}_max_{w}m", hi[:, j])
                put(f"{v}_n_{w}m", cnt[:, j])
        tp = pf * t
        st_w = by_window(tp)
        stt_w = by_window(tp * t)
        stx_w = by_window(dev0 * t)
        for w in SLOPE_WINDOWS:
            cnt = cnt_w[w]
            tm = st_w[w] / cnt
            xm = (sum_w[w] - cnt * shift) / cnt  # the window mean, around the shift
            sxx = stt_w[w] - cnt * tm * tm
            sxy = stx_w[w] - cnt * tm * xm
            slope = sxy / sxx * 60.0
            slope[(cnt < 2) | (sxx <= 1e-9)] = np.nan
            for j, v in enumerate(STAT_VITALS):
                put(f"{v}_slope_{w}m", slope[:, j])

        k = np.arange(BASELINE_MINUTES)[None, :, None]
        bp = ~np.isnan(baseline_obs) & (k <= stay_minutes[:, None, None])
        bcnt = bp.sum(axis=1).astype(np.float64)
        bmean = np.where(bp, baseline_obs, 0.0).sum(axis=1) / bcnt
        bmean[bcnt == 0] = np.nan
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
    q = qsofa(resp_rate=last("resp_rate"), systolic_bp=last("systolic_bp"), avpu_rank=last("avpu"))
    for crit in ("resp_rate", "systolic_bp", "mentation", "score"):
        put(f"qsofa_{crit}", q[crit])
    put("stay_minutes", stay_minutes)
    for i, name in enumerate(STATIC):
        put(name, static[:, i])
    return out


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
    m = minutes.sort_values("minute")
    pid = m["patient_id"].iloc[0]
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
    carried[pos, LATEST.index("on_oxygen")] = (
        m["on_oxygen"].map({True: 1.0, False: 0.0}).astype("float64").to_numpy()
    )

    keep = is_cadence_minute(epoch, cadence_minutes)
    if since is not None:
        start = since.tz_localize("UTC") if since.tzinfo is None else since.tz_convert("UTC")
        keep &= epoch >= start.value // 60_000_000_000
    rows = pos[keep]
    if len(rows) == 0:
        return _frame(pid, np.array([], dtype="datetime64[m]"), np.empty((0, len(FEATURE_NAMES))))

    padded = np.vstack([np.full((W - 1, len(CHANNELS)), np.nan), obs])
    windows = np.lib.stride_tricks.sliding_window_view(padded, W, axis=0)  # [len, C, W]
    win = np.ascontiguousarray(windows[rows].transpose(0, 2, 1))
    base = obs[:BASELINE_MINUTES, _STAT_IDX]
    if len(base) < BASELINE_MINUTES:
        base = np.vstack([base, np.full((BASELINE_MINUTES - len(base), len(_STAT_IDX)), np.nan)])
    n = len(rows)
    values = compute(
        win,
        carried[rows],
        rows.astype(np.float64),
        np.broadcast_to(base, (n, *base.shape)),
        np.broadcast_to(static, (n, len(STATIC))),
    )
    ts = mins[keep] + np.timedelta64(1, "m")
    return _frame(pid, ts, values)


def _frame(pid: str, ts: npt.NDArray[np.datetime64], values: F) -> pd.DataFrame:
    out = pd.DataFrame(values, columns=list(FEATURE_NAMES))
    out.insert(0, "ts", pd.DatetimeIndex(ts).tz_localize("UTC").astype("datetime64[us, UTC]"))
    out.insert(0, "patient_id", pd.Series([pid] * len(out), dtype="object"))
    return out
