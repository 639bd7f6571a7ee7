"""The transform against plain, obviously-right per-row arithmetic."""

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
from features.transform import SCALE, compute, dense_stats, quantize

COL = {n: i for i, n in enumerate(FEATURE_NAMES)}


def _stay(length: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A patient's dense minutes (patchy, with long gaps), carried values, rows, static."""
    rng = np.random.default_rng(seed)
    centre = np.array([80, 120, 70, 96, 16, 37, 0.3])
    spread = np.array([9, 12, 8, 2, 3, 0.4, 0])
    obs = centre + rng.normal(0, 1, (length, len(CHANNELS))) * spread
    obs[:, CHANNELS.index("avpu")] = rng.integers(0, 5, length)
    density = np.repeat(rng.uniform(0.0, 0.9, (length // 60 + 1, 1)), 60, axis=0)[:length]
    obs[rng.random(obs.shape) > density] = np.nan
    obs[:200, 0] = np.nan  # one channel unseen for hours
    obs[300:315, 1] = 118.25  # a constant stretch
    carried = np.concatenate([obs, rng.integers(0, 2, (length, 1)).astype(float)], axis=1)
    carried[rng.random(carried.shape) < 0.3] = np.nan
    rows = np.sort(rng.choice(length, size=150, replace=False)).astype(np.int64)
    static = np.tile([67.0, 1.0, 0.0], (len(rows), 1))
    return obs, carried, rows, static


def test_window_statistics_match_plain_arithmetic() -> None:
    obs, carried, rows, static = _stay(900, seed=1)
    got = compute(dense_stats(obs, carried, rows), rows.astype(float), static)
    grid = quantize(obs) / SCALE  # the statistics are of values on the 0.01 grid
    t = np.arange(len(obs), dtype=float)
    for i, r in enumerate(rows.tolist()):
        row = got[i]
        for v in STAT_VITALS:
            col = grid[:, CHANNELS.index(v)]
            for w in STAT_WINDOWS:
                x = col[max(r - w + 1, 0) : r + 1]
                seen = x[~np.isnan(x)]
                assert row[COL[f"{v}_n_{w}m"]] == len(seen)
                if len(seen) == 0:
                    for stat in ("mean", "min", "max", "std"):
                        assert np.isnan(row[COL[f"{v}_{stat}_{w}m"]])
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
                lo = max(r - w + 1, 0)
                x, tt = col[lo : r + 1], t[lo : r + 1]
                m = ~np.isnan(x)
                slope = row[COL[f"{v}_slope_{w}m"]]
                if m.sum() < 2:
                    assert np.isnan(slope)
                else:
                    expected = np.polyfit(tt[m], x[m], 1)[0] * 60
                    assert np.isclose(slope, expected, rtol=1e-7, atol=1e-9)
            # Baseline: observed minutes of the stay's first four hours up to the as-of minute.
            b = col[: min(r + 1, BASELINE_MINUTES)]
            b = b[~np.isnan(b)]
            latest = quantize(carried[r, LATEST.index(v)]) / SCALE
            expected = latest - b.mean() if len(b) else np.nan
            assert np.isclose(row[COL[f"{v}_delta_baseline"]], expected, rtol=1e-12, equal_nan=True)
        for c in CHANNELS:
            window = obs[max(r - WINDOW_MINUTES + 1, 0) : r + 1, CHANNELS.index(c)]
            seen_at = np.nonzero(~np.isnan(window))[0]
            age = row[COL[f"{c}_age_min"]]
            assert (np.isnan(age) and len(seen_at) == 0) or age == len(window) - 1 - seen_at[-1]
        for c in LATEST:
            expected = quantize(carried[r, LATEST.index(c)]) / SCALE
            assert np.array_equal(row[COL[f"{c}_last"]], expected, equal_nan=True)
    for k, name in enumerate(STATIC):
        assert np.array_equal(got[:, COL[name]], static[:, k])


def test_integer_sums_make_flat_and_straight_windows_exact() -> None:
    """No cancellation: a flat stretch has s.d. exactly 0 and a ramp its exact slope."""
    length = 60
    obs = np.full((length, len(CHANNELS)), np.nan)
    hr, spo2 = CHANNELS.index("heart_rate"), CHANNELS.index("spo2")
    obs[:, hr] = 1e4 / 3  # not on the grid: quantised to 3333.33
    obs[:, spo2] = 90.0 + 0.5 * np.arange(length)  # +0.5 % a minute = +30 %/h
    carried = np.concatenate([obs, np.zeros((length, 1))], axis=1)
    rows = np.array([length - 1])
    got = compute(dense_stats(obs, carried, rows), rows.astype(float), np.zeros((1, 3)))[0]
    assert got[COL["heart_rate_std_60m"]] == 0.0
    assert got[COL["heart_rate_mean_60m"]] == 3333.33
    assert got[COL["heart_rate_last"]] == 3333.33
    assert got[COL["spo2_slope_60m"]] == 30.0
    assert np.isclose(got[COL["spo2_std_15m"]], np.std(0.5 * np.arange(15), ddof=1), rtol=1e-15)


def test_values_are_put_on_the_grid_before_anything_else() -> None:
    got = quantize(np.array([36.849999999, 36.856, 72.5, np.nan]))
    assert got[:3].tolist() == [3685, 3686, 7250]
    assert np.isnan(got[3])


def test_the_online_block_sums_are_the_shared_minute_moments_summed() -> None:
    """One window-sum kernel: the online state's block totals (a matrix product, for
    speed) equal :func:`minute_moments` summed over the block's minutes, and shifting the
    time origin is :func:`shift_moments` on both paths."""
    from features.online import BLOCK, _block_sums
    from features.transform import minute_moments, shift_moments

    rng = np.random.default_rng(7)
    q = np.rint(rng.normal(0, 5000, size=(BLOCK, 40, 5)))
    q[rng.random(q.shape) < 0.3] = np.nan
    t = np.arange(BLOCK, dtype=np.int64)[:, None, None]
    expected = minute_moments(q, t).sum(axis=0)  # [40, 6, 5]
    got = _block_sums(q.astype(np.float32))
    np.testing.assert_array_equal(got, expected)
    c = rng.integers(-500, 500, size=40)
    shifted = minute_moments(q, t + c[None, :, None]).sum(axis=0)
    np.testing.assert_array_equal(shift_moments(expected, c), shifted)
