"""Calibration maps: fitted on out-of-fold scores, strictly increasing, sealed as JSON."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from stack.calibration import Calibration, CalibrationError, read_calibration
from training.calibrate import choose_calibration, fit_isotonic, fit_platt, log_loss
from training.clinical import calibration_stats

GRID = np.linspace(0.0, 1.0, 2001)


def _overconfident(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores like a class-weighted model's: right ranking, far too high and too extreme."""
    rng = np.random.default_rng(seed)
    true_logit = rng.normal(-3.2, 1.1, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-true_logit))).astype(np.int8)
    raw = 1 / (1 + np.exp(-(1.8 * true_logit + 4.5)))
    fold = rng.integers(0, 3, n)
    return raw, y, fold


@pytest.mark.parametrize("fit", [fit_platt, fit_isotonic])
def test_a_fitted_map_repairs_calibration_and_keeps_the_ranking(fit: object) -> None:
    raw, y, _ = _overconfident(60_000, 1)
    cal = fit(raw, y)  # type: ignore[operator]
    fresh_raw, fresh_y, _ = _overconfident(60_000, 2)
    before = calibration_stats(fresh_y, fresh_raw)
    after = calibration_stats(fresh_y, cal.apply(fresh_raw))
    assert before["mean_predicted"] > 3 * before["observed_rate"]
    assert before["brier_skill"] < 0
    assert after["mean_predicted"] == pytest.approx(after["observed_rate"], rel=0.15)
    assert after["calibration_slope"] == pytest.approx(1.0, abs=0.15)
    assert after["brier_skill"] > 0
    # Strictly increasing on [0, 1]: no ties, the same order as the raw score.
    assert (np.diff(cal.apply(GRID)) > 0).all()


def test_the_cv_choice_beats_the_raw_score_and_carries_its_meaning() -> None:
    raw, y, fold = _overconfident(30_000, 3)
    choice = choose_calibration(raw, y, fold, odds_ratio=1.0, outcome="ICU", horizon_hours=4)
    assert set(choice.cv_log_loss) == {"none", "platt", "isotonic"}
    best = min(choice.cv_log_loss["platt"], choice.cv_log_loss["isotonic"])
    assert choice.cv_log_loss[choice.calibration.method] == best
    assert best < choice.cv_log_loss["none"]
    assert log_loss(y, choice.calibration.apply(raw)) < log_loss(y, raw)
    assert choice.calibration.describe() == "risk of ICU within 4 h"
    only = choose_calibration(raw, y, fold, shapes=("platt",))
    assert only.calibration.method == "platt"


def test_the_prevalence_correction_scales_the_odds() -> None:
    base = Calibration("platt", intercept=-1.0, slope=1.0)
    enriched = Calibration("platt", intercept=-1.0, slope=1.0, odds_ratio=0.1)
    p, q = base.apply(GRID[1:-1]), enriched.apply(GRID[1:-1])
    np.testing.assert_allclose(q / (1 - q), 0.1 * p / (1 - p), rtol=1e-9)
    assert (np.diff(q) > 0).all()


def test_maps_round_trip_and_invalid_ones_are_refused(tmp_path: Path) -> None:
    raw, y, _ = _overconfident(5_000, 4)
    for cal in (fit_isotonic(raw, y), fit_platt(raw, y), Calibration()):
        again = Calibration.from_dict(cal.to_dict())
        assert again == cal
        np.testing.assert_array_equal(again.apply(GRID), cal.apply(GRID))
    assert Calibration.from_dict(None) == Calibration()  # a model from before calibration
    bad = [
        {"method": "magic"},
        {"method": "platt", "slope": -1.0},
        {"method": "platt", "slope": float("nan")},
        {"method": "isotonic", "knots_x": [0, 0.5, 1], "knots_y": [0, 0.6, 0.4]},
        {"method": "isotonic", "knots_x": [0.1, 1], "knots_y": [0, 1]},
        {"method": "none", "odds_ratio": 0},
        {"method": "none", "evil": 1},
        {"method": "isotonic", "knots_x": "abc", "knots_y": [0, 1]},
    ]
    for data in bad:
        with pytest.raises(CalibrationError):
            Calibration.from_dict(data)
    # Read from an MLmodel file's metadata, as serving does after checking the seal.
    cal = fit_isotonic(raw, y)
    (tmp_path / "MLmodel").write_text(
        yaml.safe_dump({"flavors": {}, "metadata": {"calibration": cal.to_dict()}})
    )
    assert read_calibration(tmp_path) == cal
    (tmp_path / "MLmodel").write_text(yaml.safe_dump({"flavors": {}}))
    assert read_calibration(tmp_path) == Calibration()


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.floats(0, 1), st.booleans()), min_size=2, max_size=300),
)
def test_isotonic_knots_are_always_a_valid_strictly_increasing_map(
    pairs: list[tuple[float, bool]],
) -> None:
    raw = np.array([a for a, _ in pairs])
    y = np.array([b for _, b in pairs], dtype=np.int8)
    cal = fit_isotonic(raw, y)  # the constructor validates: no error is the property
    out = cal.apply(GRID)
    assert (np.diff(out) > 0).all()
    assert 0 <= out.min() <= out.max() <= 1
