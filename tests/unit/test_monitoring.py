"""Drift detection on the simulator's named scenarios, performance, the trigger, rendering."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families

from monitoring.drift import ColumnDrift, DriftResult, columns_to_test, detect_drift, thin
from monitoring.performance import (
    Performance,
    alert_quality,
    below_floor,
    realized,
    score_performance,
)
from stack.settings import Settings, load_settings

H4 = pd.Timedelta(hours=4)
T0 = pd.Timestamp("2026-01-05T00:00:00Z")


def _ward(scenario: str, seed: int, patients: int, day: int = 2) -> pd.DataFrame:
    from pipelines.cohort import ward_day

    base = load_settings(environ={})
    return ward_day(base.simulator, base.features, scenario=scenario, seed=seed,
                    patients=patients, day=day).features  # fmt: skip


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    """What a champion's reference sample holds: a baseline ward, every 3rd row."""
    return _ward("baseline", seed=42, patients=240, day=0).iloc[::3]


def _drift(reference: pd.DataFrame, current: pd.DataFrame) -> DriftResult:
    cfg = load_settings(environ={}).monitoring.drift.model_copy(update={"max_rows": 12_000})
    result, _ = detect_drift(reference, current, cfg)
    return result


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])  # the rate over many seeds: bench/bench_drift.py
def test_baseline_wards_of_other_seeds_do_not_trigger(reference: pd.DataFrame, seed: int) -> None:
    from monitoring.job import decide

    result = _drift(reference, _ward("baseline", seed=seed, patients=100))
    assert result.tested > 100
    assert decide(result, [], load_settings(environ={})) == [], [
        (c.column, round(c.severity, 2)) for c in result.drifted
    ]


EXPECTED = {
    # fever and tachypnoea of the wave
    "respiratory_wave": (
        {"temperature_last", "resp_rate_last", "temperature_mean_60m"},
        ("heart_rate_", "systolic_bp_", "age"),
    ),
    # staff answer low readings with oxygen: the offset shows as oxygen use and NEWS2
    "spo2_sensor_offset": ({"on_oxygen_last", "news2_air_or_oxygen"}, ("temperature_", "age")),
    "older_population": ({"age"}, ("temperature_",)),
}


@pytest.mark.slow
@pytest.mark.parametrize("scenario", sorted(EXPECTED))
def test_each_drift_scenario_is_detected_with_its_columns(
    reference: pd.DataFrame, scenario: str
) -> None:
    from monitoring.job import decide

    result = _drift(reference, _ward(scenario, seed=5, patients=100))
    drifted = {c.column for c in result.drifted}
    must, must_not = EXPECTED[scenario]
    assert must <= drifted, sorted(drifted)
    assert not [c for c in drifted if c.startswith(must_not)], sorted(drifted)
    settings = load_settings(environ={})
    reasons = decide(result, [], settings)
    assert reasons
    assert reasons[0].startswith("feature drift")


def test_columns_to_test_skip_empty_constant_and_excluded() -> None:
    n = 200
    ref = pd.DataFrame({"heart_rate_last": np.arange(n, dtype=float), "age": 70.0,
                        "on_oxygen_last": np.r_[np.zeros(n - 5), np.ones(5)],
                        "spo2_std_15m": np.nan, "stay_minutes": 1.0})  # fmt: skip
    num, cat, skipped = columns_to_test(ref, ref, ("stay_minutes",))
    assert num == ["heart_rate_last"]
    assert cat == ["on_oxygen_last"]
    assert skipped["age"] == "constant in the reference"
    assert skipped["spo2_std_15m"].startswith("too few values")
    assert skipped["stay_minutes"].startswith("excluded")
    assert skipped["spo2_last"] == "missing from reference"


def test_a_shift_in_one_column_is_found_and_ranked() -> None:
    rng = np.random.default_rng(0)
    n = 3000
    ref = pd.DataFrame({"heart_rate_last": rng.normal(80, 10, n),
                        "resp_rate_last": rng.normal(16, 2, n),
                        "on_oxygen_last": (rng.random(n) < 0.1).astype(float)})  # fmt: skip
    cur = ref.assign(resp_rate_last=ref["resp_rate_last"] + 2.0,
                     on_oxygen_last=(rng.random(n) < 0.4).astype(float))  # fmt: skip
    cfg = load_settings(environ={}).monitoring.drift
    result, snapshot = detect_drift(ref, cur, cfg)
    assert [c.column for c in result.drifted] == ["on_oxygen_last", "resp_rate_last"] or [
        c.column for c in result.drifted
    ] == ["resp_rate_last", "on_oxygen_last"]
    rr = next(c for c in result.columns if c.column == "resp_rate_last")
    assert rr.score == pytest.approx(1.0, abs=0.1)  # 2 breaths/min = 1 reference s.d.
    assert rr.current_mean - rr.reference_mean == pytest.approx(2.0, abs=0.01)
    hr = next(c for c in result.columns if c.column == "heart_rate_last")
    assert not hr.drifted
    assert hr.score == 0.0
    assert result.share == pytest.approx(2 / 3)
    assert "resp_rate_last" in snapshot.json()


def test_thin_keeps_the_spread() -> None:
    f = pd.DataFrame({"x": range(10_000)})
    assert len(thin(f, 3000)) <= 3000
    assert thin(f, 3000)["x"].max() > 9_990
    assert len(thin(f, 20_000)) == 10_000


# ---------------------------------------------------------------- performance


def _preds() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two patients watched for 10 h; p1 deteriorates at 6 h, p2 never."""
    ts = T0 + pd.to_timedelta(np.arange(0, 600, 60), unit="min")
    p1 = pd.DataFrame({"patient_id": "p1", "ts": ts, "risk": np.linspace(0.1, 0.9, 10)})
    p2 = pd.DataFrame({"patient_id": "p2", "ts": ts, "risk": np.full(10, 0.2)})
    outcomes = pd.DataFrame({"patient_id": ["p1"], "ts": [T0 + pd.Timedelta(hours=6)],
                             "kind": ["sepsis"]})  # fmt: skip
    return pd.concat([p1, p2], ignore_index=True), outcomes


def test_realized_performance_labels_like_training() -> None:
    preds, outcomes = _preds()
    cfg = load_settings(environ={}).monitoring.performance.model_copy(
        update={"min_labelled": 5, "min_positive": 1}
    )
    until = T0 + pd.Timedelta(hours=10)
    perf = score_performance(
        preds, outcomes, horizon=H4, observed_until=until, cfg=cfg, source="realized"
    )
    # p1: rows at 0..5 h; 0 and 1 h are > 4 h before the outcome (0), 2..5 h positive (4);
    # 6 h onwards are after the outcome (excluded). p2: rows 0..6 h labelled 0, 7..9 h censored.
    assert (perf.labelled, perf.positive) == (2 + 4 + 7, 4)
    assert perf.roc_auc == pytest.approx(1.0)
    assert perf.judged


def test_alert_quality_counts_true_alerts_and_caught_episodes() -> None:
    preds, outcomes = _preds()
    at = [T0 + pd.Timedelta(hours=3), T0 + pd.Timedelta(hours=1)]
    alerts = pd.DataFrame({"patient_id": ["p1", "p2"], "ts": at})
    q = alert_quality(
        alerts, outcomes, preds, horizon=H4, observed_until=T0 + pd.Timedelta(hours=10)
    )
    assert q["alerts"] == 2
    assert q["alert_precision"] == pytest.approx(0.5)  # p1's alert came true, p2's did not
    assert (q["episodes"], q["alert_recall"]) == (1, 1.0)
    assert q["alerts_per_patient_day"] == pytest.approx(2 / (2 * 9 / 24))
    cfg = load_settings(environ={}).monitoring.performance
    r = realized(preds, alerts, outcomes, horizon=H4, observed_until=T0 + pd.Timedelta(hours=10),
                 cfg=cfg)  # fmt: skip
    assert r.alert_recall == 1.0
    assert not r.judged  # 13 labelled rows: too few to judge
    # The same predictions made in shadow: scored alike, but no alerts to judge.
    until = T0 + pd.Timedelta(hours=10)
    shadow = realized(preds, alerts.iloc[:0], outcomes, horizon=H4, observed_until=until,
                      cfg=cfg, served_as="shadow")  # fmt: skip
    assert (shadow.served_as, shadow.roc_auc, shadow.labelled) == ("shadow", r.roc_auc, r.labelled)
    assert (shadow.alerts, shadow.alert_precision, shadow.alert_recall) == (None, None, None)


def test_floor_only_judges_enough_data() -> None:
    cfg = load_settings(environ={}).monitoring.performance
    weak = Performance("realized", 5000, 4000, 100, True, 0.61, 0.05, 0.025)
    assert below_floor(weak, cfg) == ["realized ROC-AUC 0.610 < floor 0.70"]
    unjudged = Performance("realized", 50, 40, 1, False, 0.2, 0.01, 0.025)
    assert below_floor(unjudged, cfg) == []


def _col(name: str, drifted: bool, score: float = 0.5) -> ColumnDrift:
    return ColumnDrift(name, "numerical", "wasserstein", score, 0.3, drifted, 1.0, 2.0)


def test_decide_reasons() -> None:
    from monitoring.job import decide

    s: Settings = load_settings(environ={})
    cols = tuple(_col(f"c{i}", i < 1) for i in range(100))
    quiet = DriftResult(cols, {}, _col("risk", False, 0.1), 1000, 1000)
    assert decide(quiet, [], s) == []  # 1 % < 2 %
    loud = DriftResult(
        tuple(_col(f"c{i}", i < 3) for i in range(100)), {}, _col("risk", True), 1000, 1000
    )
    reasons = decide(loud, [Performance("realized", 9, 900, 30, True, 0.65, 0.1, 0.03)], s)
    assert [r.split(":")[0] for r in reasons] == [
        "feature drift", "prediction drift", "realized ROC-AUC 0.650 < floor 0.70"
    ]  # fmt: skip
    assert "c0, c1, c2 (1.7x its threshold >= 1.5x)" in reasons[0]
    # Broad but weak (a chance ward: correlated columns just past their thresholds, the
    # strongest at 1.1x), and a risk score just past its threshold: no trigger.
    weak = DriftResult(
        tuple(_col(f"c{i}", i < 7, 0.33) for i in range(100)), {}, _col("risk", True, 0.4),
        1000, 1000,
    )  # fmt: skip
    assert weak.share == 0.07
    assert decide(weak, [], s) == []
    # One strong column among the drifted ones is enough.
    mixed = DriftResult(
        tuple(_col(f"c{i}", i < 3, 0.33 if i else 0.5) for i in range(100)), {}, None, 1000, 1000
    )
    assert decide(mixed, [], s)[0].startswith("feature drift: 3/100")


def test_stage_metrics_textfile_parses(settings: Settings) -> None:
    from stack.metrics import record_stage

    path = record_stage(
        settings, "monitoring", seconds=3.5,
        gauges={"vigil_drift_share": ("share", 0.25)}, labels={"model_version": "7"},
    )  # fmt: skip
    fams: dict[str, Any] = {m.name: m for m in text_string_to_metric_families(path.read_text())}
    assert fams["vigil_drift_share"].samples[0].value == 0.25
    assert fams["vigil_drift_share"].samples[0].labels == {
        "stage": "monitoring",
        "model_version": "7",
    }
    assert fams["vigil_stage_last_success_timestamp_seconds"].samples[0].value > 1.7e9


def test_cooldown_is_measured_in_data_time() -> None:
    from ops.retrain import cooldown_detail

    last = pd.Timestamp("2026-01-07T00:00Z")
    assert cooldown_detail(None, last, 6) is None  # never retrained: go
    held = cooldown_detail(last, last + pd.Timedelta(hours=5, minutes=59), 6)
    assert held is not None
    assert "2026-01-07 00:00:00+00:00" in held
    assert "6 h" in held
    assert cooldown_detail(last, last + pd.Timedelta(hours=6), 6) is None  # boundary: go
    assert cooldown_detail(last, last + pd.Timedelta(days=2), 6) is None
