"""The vectorised transform against plain, obviously-right per-row arithmetic."""

from __future__ import annotations

import numpy as np

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
from features.transform import CARRY_LIMITS, carry_forward, compute

COL = {n: i for i, n in enumerate(FEATURE_NAMES)}


def _inputs(n: int, seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    centre = np.array([80, 120, 70, 96, 16, 37, 0.3])
    obs = centre + rng.normal(0, 1, (n, WINDOW_MINUTES, len(CHANNELS))) * [9, 12, 8, 2, 3, 0.4, 0]
    obs[:, :, CHANNELS.index("avpu")] = rng.integers(0, 5, (n, WINDOW_MINUTES))
    # Sparse, patchy observation: some rows almost empty, one channel never seen.
    keep = rng.random(obs.shape) < rng.uniform(0.005, 0.9, (n, 1, 1))
    obs[~keep] = np.nan
    obs[0, :, 0] = np.nan
    latest = np.concatenate([carry_forward(obs, CARRY_LIMITS[:-1]), rng.integers(0, 2, (n, 1))], 1)
    stay = rng.integers(0, 600, n).astype(float)
    base = centre[[CHANNELS.index(v) for v in STAT_VITALS]] + rng.normal(
        0, 5, (n, BASELINE_MINUTES, len(STAT_VITALS))
    )
    base[rng.random(base.shape) < 0.5] = np.nan
    static = np.column_stack(
        [rng.integers(20, 90, n), rng.integers(0, 2, n), rng.integers(0, 2, n)]
    )
    return obs, latest.astype(float), stay, base, static.astype(float)


def test_window_statistics_match_plain_arithmetic() -> None:
    obs, latest, stay, base, static = _inputs(64, seed=1)
    got = compute(obs, latest, stay, base, static)
    t = np.arange(WINDOW_MINUTES, dtype=float)
    for i in range(len(obs)):
        for v in STAT_VITALS:
            col = obs[i, :, CHANNELS.index(v)]
            for w in STAT_WINDOWS:
                x = col[-w:]
                seen = x[~np.isnan(x)]
                row = got[i]
                assert row[COL[f"{v}_n_{w}m"]] == len(seen)
                if len(seen) == 0:
                    assert np.isnan(row[COL[f"{v}_mean_{w}m"]])
                    assert np.isnan(row[COL[f"{v}_min_{w}m"]])
                    continue
                assert np.isclose(row[COL[f"{v}_mean_{w}m"]], seen.mean(), rtol=1e-12)
                assert row[COL[f"{v}_min_{w}m"]] == seen.min()
                assert row[COL[f"{v}_max_{w}m"]] == seen.max()
                std = row[COL[f"{v}_std_{w}m"]]
                if len(seen) < 2:
                    assert np.isnan(std)
                else:
                    assert np.isclose(std, seen.std(ddof=1), rtol=1e-9, atol=1e-12)
            for w in SLOPE_WINDOWS:
                x, tt = col[-w:], t[-w:]
                m = ~np.isnan(x)
                slope = got[i, COL[f"{v}_slope_{w}m"]]
                if m.sum() < 2:
                    assert np.isnan(slope)
                else:
                    expected = np.polyfit(tt[m], x[m], 1)[0] * 60
                    assert np.isclose(slope, expected, rtol=1e-7, atol=1e-9)
            # Baseline: observed minutes of the stay's first four hours up to the as-of minute.
            b = base[i, : int(min(stay[i] + 1, BASELINE_MINUTES)), STAT_VITALS.index(v)]
            b = b[~np.isnan(b)]
            delta = got[i, COL[f"{v}_delta_baseline"]]
            expected = latest[i, LATEST.index(v)] - b.mean() if len(b) else np.nan
            assert np.isclose(delta, expected, rtol=1e-12, equal_nan=True)
        for c in CHANNELS:
            seen_at = np.nonzero(~np.isnan(obs[i, :, CHANNELS.index(c)]))[0]
            age = got[i, COL[f"{c}_age_min"]]
            assert (np.isnan(age) and len(seen_at) == 0) or age == WINDOW_MINUTES - 1 - seen_at[-1]
    for k, name in enumerate(STATIC):
        assert np.array_equal(got[:, COL[name]], static[:, k])


def test_carry_forward_stops_at_the_limit() -> None:
    w = np.full((3, WINDOW_MINUTES, 1), np.nan)
    w[0, -6, 0] = 70.0  # 5 minutes before the end: carried (limit 5)
    w[1, -7, 0] = 70.0  # 6 minutes before: too old
    got = carry_forward(w, np.array([5]))
    assert got[0, 0] == 70.0
    assert np.isnan(got[1, 0])
    assert np.isnan(got[2, 0])
