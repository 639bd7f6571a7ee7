"""NEWS2 and qSOFA, vectorised over arrays of observations.

NEWS2 follows the chart of the Royal College of Physicians, *National Early Warning Score
(NEWS) 2: Standardising the assessment of acute-illness severity in the NHS*, London, RCP
2017 (chart 1 and the SpO2 scale 2 guidance, section 5). Scores per parameter:

==================  =====  =======  =======  =========  =======  =======  ====
parameter           3      2        1        0          1        2        3
==================  =====  =======  =======  =========  =======  =======  ====
respiration /min    ≤ 8             9-11     12-20               21-24    ≥ 25
SpO2 scale 1 %      ≤ 91   92-93    94-95    ≥ 96
SpO2 scale 2 %      ≤ 83   84-85    86-87    88-92;     93-94    95-96    ≥ 97
                                             ≥ 93 air   on O2    on O2    on O2
air or oxygen              oxygen            air
systolic BP mmHg    ≤ 90   91-100   101-110  111-219                      ≥ 220
pulse /min          ≤ 40            41-50    51-90      91-110   111-130  ≥ 131
consciousness                                alert                        CVPU
temperature °C      ≤ 35.0          35.1-36  36.1-38.0  38.1-39  ≥ 39.1
==================  =====  =======  =======  =========  =======  =======  ====

The chart's bands are written for whole numbers (one decimal for temperature); the
per-minute medians here can fall between them (a respiratory rate of 20.5), so each band
is read as "up to and including its upper limit": 20.5 breaths/min scores like 21.

A missing parameter scores 0 and is counted in ``news2_missing``; a clinician would not
chart a total with a parameter missing, a model can use the count.

The chart's clinical response (RCP 2017, chart 2 "NEWS thresholds and triggers" and
chart 3 "Clinical response") has three triggers and four tiers, all computed here:

============================  ===========  ========================================
trigger                       tier         minimum monitoring frequency (chart 3)
============================  ===========  ========================================
aggregate 0                   low          12-hourly
aggregate 1-4                 low          4-6-hourly
3 in a single parameter       low-medium   hourly ("red score": urgent ward review)
("red score")
aggregate 5-6                 medium       hourly (urgent response threshold)
aggregate 7 or more           high         continuous (emergency response)
============================  ===========  ========================================

:data:`TRIGGERS` names the three escalation rules evaluations compare a model with:
NEWS2 ≥ 5, NEWS2 ≥ 7, and NEWS2 ≥ 5 *or* a red score (the rule that sends for a
clinician at tier low-medium or above).

qSOFA (Singer et al., *JAMA* 2016;315(8):801-810): respiratory rate ≥ 22/min, systolic BP
≤ 100 mmHg, altered mentation (here: any AVPU other than alert).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

F = npt.NDArray[np.float64]

# (upper limit inclusive, points) bands, lowest first; values above the last limit score
# the final ``top`` points.
_BANDS: dict[str, tuple[tuple[tuple[float, int], ...], int]] = {
    "resp_rate": (((8, 3), (11, 1), (20, 0), (24, 2)), 3),
    "spo2_scale1": (((91, 3), (93, 2), (95, 1)), 0),
    "systolic_bp": (((90, 3), (100, 2), (110, 1), (219, 0)), 3),
    "heart_rate": (((40, 3), (50, 1), (90, 0), (110, 1), (130, 2)), 3),
    "temperature": (((35.0, 3), (36.0, 1), (38.0, 0), (39.0, 1)), 2),
}
_SPO2_SCALE2_LOW = ((83, 3), (85, 2), (87, 1))  # same on air and on oxygen
_SPO2_SCALE2_ON_O2 = (((92, 0), (94, 1), (96, 2)), 3)

NEWS2_PARAMETERS = (
    "resp_rate", "spo2", "air_or_oxygen", "systolic_bp", "heart_rate", "consciousness",
    "temperature",
)  # fmt: skip
AVPU_ALERT = 0  # rank of "A" in A < C < V < P < U

# Response tiers of RCP 2017 chart 3, as ordinal codes (the ``news2_tier`` feature).
TIER_LOW, TIER_LOW_MEDIUM, TIER_MEDIUM, TIER_HIGH = 0, 1, 2, 3
TIER_NAMES = ("low", "low-medium", "medium", "high")


def response_tier(total: F, red: F) -> F:
    """RCP 2017 clinical-response tier: high (≥ 7), medium (5-6), low-medium (a red
    score with an aggregate below 5), else low."""
    total = np.asarray(total, dtype=np.float64)
    red = np.asarray(red, dtype=np.float64)
    return np.select(
        [total >= 7, total >= 5, red >= 1], [TIER_HIGH, TIER_MEDIUM, TIER_LOW_MEDIUM], TIER_LOW
    ).astype(np.float64)


def monitoring_interval_minutes(total: F, red: F, *, low_score_hours: float = 4.0) -> F:
    """The longest gap between observation sets chart 3 allows: 12 h at 0, 4-6 h at 1-4
    (``low_score_hours`` picks within that range), 1 h at a red score or 5-6, and 0
    (continuous) at 7 or more."""
    total = np.asarray(total, dtype=np.float64)
    tier = response_tier(total, red)
    low = np.where(total <= 0, 12 * 60.0, low_score_hours * 60.0)
    return np.select([tier == TIER_HIGH, tier >= TIER_LOW_MEDIUM], [0.0, 60.0], low).astype(
        np.float64
    )


@dataclass(frozen=True)
class Trigger:
    """One escalation rule of the NEWS2 chart, evaluated on the total and red flag."""

    key: str  # a metric-safe name: news2_ge5
    label: str  # for people: NEWS2 ≥ 5
    min_total: float  # fires at an aggregate ≥ this …
    or_red: bool  # … or, if set, at any single-parameter score of 3

    def fires(self, total: npt.ArrayLike, red: npt.ArrayLike) -> npt.NDArray[np.bool_]:
        t = np.asarray(total, dtype=np.float64) >= self.min_total
        if self.or_red:
            t |= np.asarray(red, dtype=np.float64) >= 1
        return t


TRIGGERS: dict[str, Trigger] = {
    t.key: t
    for t in (
        Trigger("news2_ge5", "NEWS2 ≥ 5", 5, False),
        Trigger("news2_ge7", "NEWS2 ≥ 7", 7, False),
        Trigger("news2_ge5_or_red", "NEWS2 ≥ 5 or red", 5, True),
    )
}


def _banded(x: F, bands: tuple[tuple[float, int], ...], top: int) -> F:
    limits = np.array([b[0] for b in bands], dtype=np.float64)
    points = np.array([b[1] for b in bands] + [top], dtype=np.float64)
    idx = np.searchsorted(limits, x, side="left")  # first limit >= x
    out = points[np.minimum(idx, len(bands))]
    return np.where(np.isnan(x), np.nan, out)


def zero_range(name: str) -> tuple[float, float]:
    """The values that score 0 points for ``name`` (a :data:`_BANDS` key): (above, up to).

    E.g. ``resp_rate`` → (11, 20): 12-20 breaths/min; ``spo2_scale1`` → (95, inf).
    """
    bands, top = _BANDS[name]
    lower = -np.inf
    for limit, points in bands:
        if points == 0:
            return (lower, float(limit))
        lower = float(limit)
    if top == 0:
        return (lower, np.inf)
    raise ValueError(f"{name} has no zero-score band")


def score_parameter(name: str, x: F) -> F:
    """Points for one parameter (``resp_rate``, ``systolic_bp``, ``heart_rate``,
    ``temperature`` or ``spo2_scale1``); NaN where ``x`` is missing."""
    bands, top = _BANDS[name]
    return _banded(np.asarray(x, dtype=np.float64), bands, top)


def score_spo2(spo2: F, on_oxygen: F, scale2: F) -> F:
    """SpO2 points on the patient's scale; unknown oxygen counts as air."""
    spo2 = np.asarray(spo2, dtype=np.float64)
    s1 = score_parameter("spo2_scale1", spo2)
    low = _banded(spo2, _SPO2_SCALE2_LOW, 0)  # ≥ 88 scores 0 here
    high = _banded(spo2, *_SPO2_SCALE2_ON_O2)
    s2 = np.where((spo2 > 92) & (on_oxygen == 1), high, low)
    return np.where(scale2 == 1, s2, s1)


def news2(
    *,
    resp_rate: F,
    spo2: F,
    on_oxygen: F,
    systolic_bp: F,
    heart_rate: F,
    avpu_rank: F,
    temperature: F,
    scale2: F,
) -> dict[str, F]:
    """Per-parameter points (NaN when missing), ``total`` (missing = 0), ``missing``,
    ``red`` (1 when any parameter scores 3) and the response ``tier``."""
    parts = {
        "resp_rate": score_parameter("resp_rate", resp_rate),
        "spo2": score_spo2(spo2, on_oxygen, scale2),
        "air_or_oxygen": np.where(np.isnan(on_oxygen), np.nan, np.where(on_oxygen == 1, 2, 0)),
        "systolic_bp": score_parameter("systolic_bp", systolic_bp),
        "heart_rate": score_parameter("heart_rate", heart_rate),
        "consciousness": np.where(
            np.isnan(avpu_rank), np.nan, np.where(avpu_rank > AVPU_ALERT, 3, 0)
        ),
        "temperature": score_parameter("temperature", temperature),
    }
    stacked = np.stack([parts[p] for p in NEWS2_PARAMETERS], axis=-1)
    out = {p: parts[p].astype(np.float64) for p in NEWS2_PARAMETERS}
    out["total"] = np.nansum(stacked, axis=-1)
    out["missing"] = np.isnan(stacked).sum(axis=-1).astype(np.float64)
    out["red"] = (np.nan_to_num(stacked, nan=0.0) >= 3).any(axis=-1).astype(np.float64)
    out["tier"] = response_tier(out["total"], out["red"])
    return out


def qsofa(*, resp_rate: F, systolic_bp: F, avpu_rank: F) -> dict[str, F]:
    """qSOFA criteria as 0/1 (a missing parameter is not met) and their sum."""
    rr = np.nan_to_num(np.asarray(resp_rate, dtype=np.float64), nan=0.0) >= 22
    sbp = np.nan_to_num(np.asarray(systolic_bp, dtype=np.float64), nan=np.inf) <= 100
    mentation = np.nan_to_num(np.asarray(avpu_rank, dtype=np.float64), nan=0.0) > AVPU_ALERT
    return {
        "resp_rate": rr.astype(np.float64),
        "systolic_bp": sbp.astype(np.float64),
        "mentation": mentation.astype(np.float64),
        "score": (rr.astype(np.int8) + sbp + mentation).astype(np.float64),
    }
