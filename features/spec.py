"""The feature set, declared once: every consumer reads :data:`FEATURES` from here.

Features describe one patient *as of* the end of one minute (``ts`` = that minute + 1
minute, exclusive end): only readings in that minute and before it count. They are
computed from the per-minute rows of ``features.resample`` by ``features.transform``,
the same function in the Spark batch job and in the online scorer.

Change anything here — a window, a name, a definition in ``transform`` or ``news2`` —
and bump :data:`FEATURE_SET_VERSION`: models record the version they were trained on and
the service refuses a model whose features it does not produce. ``tests/unit`` pins the
digest of the declaration so that a change without a bump fails.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from features.news2 import NEWS2_PARAMETERS
from stack import catalog

# v2: statistics over values on a 0.01 grid (exact sums); v3: NEWS2 red score and tier.
FEATURE_SET_VERSION = "vitals-v3"
# Where this version's rows live (stack.catalog spells them, keyed by the version): a
# version bump moves every reader and writer together.
FEATURES_ZONE = catalog.features_zone(FEATURE_SET_VERSION)
LABELS_ZONE = catalog.labels_zone(FEATURE_SET_VERSION)
LABELS_FILE = catalog.labels_file(FEATURE_SET_VERSION)
FEATURES_TABLE = catalog.features_table(FEATURE_SET_VERSION)

WINDOW_MINUTES = 240  # the longest look-back: the online state keeps no more than this
STAT_WINDOWS = (15, 60, 240)
SLOPE_WINDOWS = (60, 240)
BASELINE_MINUTES = 240  # "the patient's own baseline": the first four hours of the stay

# Per-minute channels the transform reads (observed minute medians, NaN when unobserved).
CHANNELS = (
    "heart_rate", "systolic_bp", "diastolic_bp", "spo2", "resp_rate", "temperature", "avpu",
)  # fmt: skip
# Carried (bounded forward-filled) values at the as-of minute: the channels plus oxygen.
LATEST = (*CHANNELS, "on_oxygen")
STAT_VITALS = ("heart_rate", "systolic_bp", "spo2", "resp_rate", "temperature")

UNITS = {
    "heart_rate": "bpm",
    "systolic_bp": "mmHg",
    "diastolic_bp": "mmHg",
    "spo2": "%",
    "resp_rate": "breaths/min",
    "temperature": "°C",
    "avpu": "AVPU rank (A=0 … U=4)",
    "on_oxygen": "0/1",
}


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    unit: str
    description: str
    dtype: str = "float64"

    @property
    def discrete(self) -> bool:
        """Takes a handful of levels (flags, scores, ranks): compared as categories."""
        return self.unit in _DISCRETE_UNITS


TIER_UNIT = "tier"
_DISCRETE_UNITS = frozenset({"0/1", "points", "count", TIER_UNIT, UNITS["avpu"]})


def _declare() -> tuple[FeatureSpec, ...]:
    out: list[FeatureSpec] = []
    add = out.append
    for v in LATEST:
        add(FeatureSpec(f"{v}_last", UNITS[v], f"latest {v}, carried for its bounded ffill"))
    for v in CHANNELS:
        add(FeatureSpec(f"{v}_age_min", "min", f"minutes since {v} was last observed"))
    for w in STAT_WINDOWS:
        for v in STAT_VITALS:
            u = UNITS[v]
            add(FeatureSpec(f"{v}_mean_{w}m", u, f"mean of observed {v} minutes, last {w} min"))
            add(FeatureSpec(f"{v}_std_{w}m", u, f"sample s.d. of observed {v}, last {w} min"))
            add(FeatureSpec(f"{v}_min_{w}m", u, f"lowest observed {v}, last {w} min"))
            add(FeatureSpec(f"{v}_max_{w}m", u, f"highest observed {v}, last {w} min"))
            add(FeatureSpec(f"{v}_n_{w}m", "min", f"minutes with {v} observed, last {w} min"))
    for w in SLOPE_WINDOWS:
        for v in STAT_VITALS:
            add(
                FeatureSpec(
                    f"{v}_slope_{w}m",
                    f"{UNITS[v]}/h",
                    f"least-squares trend of observed {v} over the last {w} min",
                )
            )
    for v in STAT_VITALS:
        add(
            FeatureSpec(
                f"{v}_delta_baseline",
                UNITS[v],
                f"latest {v} minus its mean over the first {BASELINE_MINUTES} min of the stay",
            )
        )
    add(FeatureSpec("shock_index", "bpm/mmHg", "heart rate / systolic BP (latest)"))
    add(FeatureSpec("mean_arterial_pressure", "mmHg", "(systolic + 2 × diastolic) / 3"))
    add(FeatureSpec("pulse_pressure", "mmHg", "systolic − diastolic"))
    for p in NEWS2_PARAMETERS:
        add(FeatureSpec(f"news2_{p}", "points", f"NEWS2 points for {p} (RCP 2017)"))
    add(FeatureSpec("news2_total", "points", "NEWS2 aggregate score (missing parameters = 0)"))
    add(FeatureSpec("news2_missing", "count", "NEWS2 parameters with no carried value"))
    add(FeatureSpec("news2_red", "0/1", "a single NEWS2 parameter scores 3 (red score)"))
    add(
        FeatureSpec(
            "news2_tier",
            TIER_UNIT,
            "RCP clinical-response tier: 0 low, 1 low-medium, 2 medium, 3 high",
        )
    )
    add(FeatureSpec("qsofa_resp_rate", "0/1", "respiratory rate ≥ 22/min"))
    add(FeatureSpec("qsofa_systolic_bp", "0/1", "systolic BP ≤ 100 mmHg"))
    add(FeatureSpec("qsofa_mentation", "0/1", "AVPU other than alert"))
    add(FeatureSpec("qsofa_score", "points", "qSOFA criteria met (0-3)"))
    add(FeatureSpec("stay_minutes", "min", "minutes since the first usable reading"))
    add(FeatureSpec("age", "years", "age at admission (ADT feed)"))
    add(FeatureSpec("female", "0/1", "sex recorded at admission is F"))
    add(FeatureSpec("spo2_scale2", "0/1", "chart prescribes NEWS2 SpO2 scale 2"))
    return tuple(out)


FEATURES: tuple[FeatureSpec, ...] = _declare()
FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)
STATIC = ("age", "female", "spo2_scale2")
DISCRETE_FEATURES: tuple[str, ...] = tuple(f.name for f in FEATURES if f.discrete)


def digest() -> str:
    """A short hash of the declaration (names, units, windows)."""
    text = repr((FEATURES, WINDOW_MINUTES, STAT_WINDOWS, SLOPE_WINDOWS, BASELINE_MINUTES))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
