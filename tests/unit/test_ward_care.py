"""The ward's care in the simulator: observation sets at the NEWS2 frequency, episodes
that settle by themselves, rescue after an escalation, outcome rates and their mix."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from features.news2 import monitoring_interval_minutes, news2
from pipelines.simulator.engine import WardSimulator
from pipelines.simulator.population import KINDS, _outcome_events
from stack.settings import SimulatorSettings
from tests.unit.test_simulator import NO_FAULTS, frames, run

AVPU_RANK = {"A": 0, "C": 1, "V": 2, "P": 3, "U": 4}


def ward(**kw: Any) -> SimulatorSettings:
    base: dict[str, Any] = {"patients": 300, "hours": 36, "seed": 5, "faults": NO_FAULTS}
    base.update(kw)
    return SimulatorSettings.model_validate(base)


GENERAL = {"mode": "news2_tier", "low_score_hours": 6, "late_share": 0.25}


@pytest.fixture(scope="module")
def general_ward() -> tuple[WardSimulator, pd.DataFrame, pd.DataFrame]:
    cfg = ward(observation=GENERAL, episodes={"deterioration_rate_per_day": 0.3})
    sim, msgs = run(cfg)
    v, o = frames(msgs)
    return sim, v, o


def _set_scores(sim: WardSimulator, v: pd.DataFrame) -> pd.DataFrame:
    """Observation sets (a reading with every parameter charted) and their NEWS2."""
    full = v.dropna(
        subset=["resp_rate", "spo2", "systolic_bp", "heart_rate", "temperature", "consciousness"]
    ).copy()
    scale2 = dict(zip(sim.population.patient_id, sim.population.hypercapnic, strict=True))
    sc = news2(
        resp_rate=full["resp_rate"].to_numpy(float),
        spo2=full["spo2"].to_numpy(float),
        on_oxygen=full["on_oxygen"].astype(float).to_numpy(),
        systolic_bp=full["systolic_bp"].to_numpy(float),
        heart_rate=full["heart_rate"].to_numpy(float),
        avpu_rank=full["consciousness"].map(AVPU_RANK).to_numpy(float),
        temperature=full["temperature"].to_numpy(float),
        scale2=full["patient_id"].map(scale2).astype(float).to_numpy(),
    )
    full["total"], full["red"] = sc["total"], sc["red"]
    return full.sort_values(["patient_id", "ts"])


def test_general_ward_charts_sets_no_further_apart_than_the_chart_allows(
    general_ward: Any,
) -> None:
    sim, v, _ = general_ward
    sets = _set_scores(sim, v)
    assert sim.stats.observation_sets > 0
    # Every reading of a patient not on continuous monitoring is a full set.
    assert len(sets) >= 0.9 * sim.stats.observation_sets
    prev = sets.groupby("patient_id").shift(1)
    gap = (sets["ts"] - prev["ts"]).dt.total_seconds() / 60
    allowed = monitoring_interval_minutes(
        prev["total"].to_numpy(), prev["red"].to_numpy(), low_score_hours=6
    )
    allowed = np.where(allowed == 0, 60, allowed) * (1 + GENERAL["late_share"]) + 2
    ok = gap.isna() | (gap <= allowed)
    assert ok.all(), sets[~ok][["patient_id", "ts", "total"]].head()
    # ... and no closer than hourly, except on continuous monitoring (monitor readings).
    per_day = len(v) / (sim.population.size * 36 / 24)
    assert per_day < 40  # vs 1,440 a day on the monitored ward
    # The quiet majority is charted 12-hourly: long gaps after a score of 0.
    after_zero = gap[(prev["total"] == 0).to_numpy()]
    assert after_zero.median() > 11 * 60


def test_a_score_of_seven_puts_the_patient_on_continuous_monitoring(general_ward: Any) -> None:
    sim, v, _ = general_ward
    sets = _set_scores(sim, v)
    high = sets[sets["total"] >= 7]
    assert len(high) > 0
    pid, ts = high.iloc[0]["patient_id"], high.iloc[0]["ts"]
    after = v[(v["patient_id"] == pid) & (v["ts"] > ts) & (v["ts"] <= ts + pd.Timedelta("30min"))]
    # The monitor then reads the heart rate every minute.
    assert after["heart_rate"].notna().sum() >= 20


def test_general_ward_is_deterministic() -> None:
    cfg = ward(patients=80, hours=12, observation=GENERAL)
    assert [m[2] for m in run(cfg)[1]] == [m[2] for m in run(cfg)[1]]


def test_resolving_episodes_end_without_an_outcome() -> None:
    cfg = ward(episodes={"deterioration_rate_per_day": 0.9, "recover_share": 1.0})
    sim, msgs = run(cfg)
    _, o = frames(msgs)
    assert sim.stats.episodes_started > 50
    assert sim.stats.episodes_resolving == sim.stats.episodes_started
    assert len(o) == 0
    assert sim.stats.outcomes == 0


def test_rescue_averts_outcomes_and_turns_the_course() -> None:
    episodes = {"deterioration_rate_per_day": 0.9, "recover_share": 0.0}
    sure = {"trigger": "news2_ge5", "response_share": 1.0, "success_share": 1.0}
    none = run(ward(episodes=episodes, rescue={"trigger": "none"}))[0]
    saved, msgs = run(ward(episodes=episodes, rescue=sure))
    assert none.stats.rescues == 0
    assert none.stats.escalations == 0
    assert saved.stats.escalations >= saved.stats.rescues > 20
    st = saved.state
    assert st is not None
    rescued = np.flatnonzero(np.isfinite(st.rescue_min))
    # Exactly the rescued outcomes that would have come inside the window are gone.
    due = saved.population.outcome_min[rescued] < saved.cfg.hours * 60
    assert saved.stats.outcomes == none.stats.outcomes - int(due.sum())
    # A rescued patient stays on the ward and gets better: breathing hours later is
    # slower than when treatment started.
    v, _ = frames(msgs)
    pid = np.array(saved.population.patient_id)
    start = pd.Timestamp(saved.cfg.start)
    pairs = better = 0
    for i in rescued:
        mine = v[v["patient_id"] == pid[i]]
        t0 = start + pd.Timedelta(minutes=float(st.rescue_min[i]))
        before = mine[(mine["ts"] >= t0 - pd.Timedelta("30min")) & (mine["ts"] < t0)]
        later = mine[mine["ts"] >= t0 + pd.Timedelta("4h")]
        if len(before) and len(later):
            pairs += 1
            better += later["resp_rate"].mean() < before["resp_rate"].mean()
    assert pairs >= 20
    assert better >= 0.85 * pairs


def test_escalations_need_a_trigger_seen_at_a_set() -> None:
    # Nothing triggers without a deterioration or a look-alike, so nobody is escalated.
    cfg = ward(episodes={"deterioration_rate_per_day": 0.0, "mimic_rate_per_day": 0.0})
    sim, _ = run(cfg)
    assert sim.stats.escalations == 0


def test_enrichment_multiplies_the_simulated_rate() -> None:
    real = ward(patients=2000, hours=24, episodes={"deterioration_rate_per_day": 0.02})
    rich = ward(
        patients=2000, hours=24, episodes={"deterioration_rate_per_day": 0.02, "enrichment": 8}
    )
    assert rich.episodes.simulated_rate_per_day == pytest.approx(0.16)
    a = WardSimulator(real).population.episode_kind >= 0
    b = WardSimulator(rich).population.episode_kind >= 0
    assert 0.01 < a.mean() < 0.035
    assert 0.12 < b.mean() < 0.21


def test_cardiac_arrests_are_a_small_share_of_outcomes_mostly_cardiac() -> None:
    rng = np.random.default_rng(0)
    kind = rng.integers(0, len(KINDS), 200_000)
    mix = {"icu_transfer": 0.67, "emergency_response": 0.30, "cardiac_arrest": 0.03}
    events = np.array(_outcome_events(mix, kind, rng.random(kind.size)))
    arrest = events == "cardiac_arrest"
    assert arrest.mean() == pytest.approx(0.03, abs=0.004)
    cardiac = kind == KINDS.index("cardiac")
    assert arrest[cardiac].mean() > 3 * arrest[~cardiac].mean()
    assert (events == "icu_transfer").mean() == pytest.approx(0.67, abs=0.01)
