"""The simulator is the ground everything stands on: physiology, episodes, faults, drift."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest

from pipelines.simulator.engine import MALFORMED_KINDS, WardSimulator
from pipelines.simulator.population import KINDS
from pipelines.simulator.scenarios import SCENARIOS, get_scenario
from stack.contracts import AdmissionEvent
from stack.settings import SimulatorSettings

NO_FAULTS = {
    "missing": 0, "artifact": 0, "impossible": 0, "fahrenheit_device": 0,
    "duplicate": 0, "late": 0, "malformed": 0,
}  # fmt: skip


def sim_cfg(**kw: Any) -> SimulatorSettings:
    base: dict[str, Any] = {"patients": 60, "hours": 6, "seed": 7}
    for key in ("faults", "episodes", "cadence", "population"):
        if key in kw:
            kw[key] = {**kw[key]}
    base.update(kw)
    return SimulatorSettings.model_validate(base)


def run(cfg: SimulatorSettings) -> tuple[WardSimulator, list[tuple[str, bytes, bytes, float]]]:
    sim = WardSimulator(cfg, record_faults=True)
    msgs = [m for chunk in sim.messages() for m in chunk]
    return sim, msgs


def frames(msgs: list[tuple[str, bytes, bytes, float]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    vit, out = [], []
    for role, _k, v, emit in msgs:
        try:
            d = orjson.loads(v)
        except orjson.JSONDecodeError:
            continue
        d["emit_s"] = emit
        if role != "admissions":
            (vit if role == "vitals" else out).append(d)
    v = pd.DataFrame(vit)
    v["ts"] = pd.to_datetime(v["ts"], utc=True)
    o = pd.DataFrame(out)
    if len(o):
        o["ts"] = pd.to_datetime(o["ts"], utc=True)
    return v, o


@pytest.fixture(scope="module")
def clean_ward() -> tuple[WardSimulator, pd.DataFrame, pd.DataFrame]:
    cfg = sim_cfg(
        patients=600, hours=12, faults=NO_FAULTS,
        episodes={"deterioration_rate_per_day": 0.9, "quiet_share": 0.0},
    )  # fmt: skip
    sim, msgs = run(cfg)
    v, o = frames(msgs)
    return sim, v, o


def test_same_seed_gives_the_same_bytes_and_another_seed_does_not() -> None:
    a = [m[2] for m in run(sim_cfg())[1]]
    b = [m[2] for m in run(sim_cfg())[1]]
    c = [m[2] for m in run(sim_cfg(seed=8))[1]]
    assert a == b
    assert a != c


def test_chunk_size_changes_nothing_but_batching() -> None:
    # Carried state (drift, oxygen) keeps series continuous across chunks: equal-length
    # chunks draw the same random stream, so here only the grouping of messages differs.
    sim = WardSimulator(sim_cfg(chunk_minutes=60))
    sizes = [len(c) for c in sim.messages()]
    assert len(sizes) >= 6
    assert sum(sizes) == sim.stats.vitals_messages + sim.stats.outcomes + sim.stats.admissions


def test_every_patient_is_admitted_before_their_first_reading() -> None:
    sim = WardSimulator(sim_cfg())
    first_reading: dict[str, str] = {}
    admissions: dict[str, dict[str, Any]] = {}
    for chunk in sim.messages():
        for role, key, value, _emit in chunk:
            pid = key.decode()
            if role == "admissions":
                assert pid not in admissions, "admitted twice"
                assert pid not in first_reading, "a reading came before the admission"
                admissions[pid] = AdmissionEvent.model_validate_json(value).model_dump()
            elif role == "vitals":
                first_reading.setdefault(pid, value.decode())
    pop = sim.population
    assert len(admissions) == pop.size == sim.stats.admissions
    for i, pid in enumerate(pop.patient_id):
        a = admissions[pid]
        assert a["age"] == int(pop.age[i])
        assert a["sex"] == ("F" if pop.female[i] else "M")
        assert a["spo2_scale"] == (2 if pop.hypercapnic[i] else 1)
    # RCP 2017: scale 2 only for confirmed hypercapnic failure, a subset of COPD.
    assert (pop.hypercapnic <= pop.copd).all()
    assert 0 < pop.hypercapnic.sum() < pop.copd.sum()


def test_baselines_are_physiological(clean_ward: Any) -> None:
    sim, v, _ = clean_ward
    pop = sim.population
    assert pop.hr.min() >= 45
    assert pop.hr.max() <= 110
    assert pop.sbp.min() >= 85
    assert pop.sbp.max() <= 200
    assert (pop.spo2[pop.hypercapnic] >= 88).all()
    assert (pop.spo2[pop.hypercapnic] <= 92).all()
    other_copd = pop.copd & ~pop.hypercapnic
    assert (pop.spo2[other_copd] >= 92).all()
    assert (pop.spo2[other_copd] <= 95).all()
    assert (pop.spo2[~pop.copd] >= 93).all()
    assert pop.temp.min() >= 36.0
    assert pop.temp.max() <= 37.6
    assert pop.hr[pop.beta_blocker].mean() < pop.hr[~pop.beta_blocker].mean() - 6
    # Readings stay within what monitors can show.
    assert v["heart_rate"].between(25, 220).all()
    assert v["spo2"].dropna().between(50, 100).all()
    assert (v["diastolic_bp"].dropna() < v["systolic_bp"].dropna()).all()
    assert set(v["consciousness"].dropna()) <= set("ACVPU")


def test_hypercapnic_patients_live_at_lower_spo2(clean_ward: Any) -> None:
    sim, v, _ = clean_ward
    pop = sim.population
    group = {pop.patient_id[i]: ("hypercapnic" if pop.hypercapnic[i] else
                                 "copd" if pop.copd[i] else "other")
             for i in range(pop.size)}  # fmt: skip
    med = v.groupby(v["patient_id"].map(group))["spo2"].median()
    assert med["hypercapnic"] <= 92
    assert 92 <= med["copd"] < med["other"]
    assert med["other"] >= 95


def test_circadian_rhythm_in_heart_rate(clean_ward: Any) -> None:
    _, v, _ = clean_ward
    by_hour = v.groupby(v["ts"].dt.hour)["heart_rate"].mean()
    assert by_hour.loc[[2, 3, 4, 5]].mean() < by_hour.loc[[9, 10, 11]].mean()


def test_intermittent_measurements_follow_their_cadence(clean_ward: Any) -> None:
    _, v, _ = clean_ward
    share = v[["heart_rate", "systolic_bp", "temperature", "consciousness"]].notna().mean()
    assert share["heart_rate"] == 1.0
    assert share["systolic_bp"] == pytest.approx(1 / 15, rel=0.1)
    assert share["temperature"] == pytest.approx(1 / 30, rel=0.15)
    assert share["consciousness"] == pytest.approx(1 / 60, rel=0.2)


def _before_outcome(v: pd.DataFrame, pid: str, end: pd.Timestamp) -> tuple[pd.DataFrame, ...]:
    """A patient's readings in their first hour, and in the 45 minutes before ``end``."""
    p = v[v["patient_id"] == pid]
    first = p[p["ts"] < p["ts"].min() + pd.Timedelta(hours=1)]
    return first, p[p["ts"] > end - pd.Timedelta(minutes=45)]


def _hypoxaemia_rise(first: pd.DataFrame, last: pd.DataFrame) -> float:
    """Oxygen started plus a third of the SpO2 fall, from ``first`` to ``last``."""
    return float(
        (last["on_oxygen"].mean() - first["on_oxygen"].mean())
        + (first["spo2"].mean() - last["spo2"].mean()) / 3
    )


@pytest.mark.parametrize(
    ("kind", "expect"),
    [
        ("sepsis", {"heart_rate": +1, "resp_rate": +1}),
        ("respiratory", {"resp_rate": +1, "oxygen_or_low_spo2": +1}),
        ("hypovolaemic", {"heart_rate": +1, "systolic_bp": -1}),
        ("cardiac", {"systolic_bp": -1, "resp_rate": +1}),
    ],
)
def test_deteriorating_patients_move_as_physiology_says(
    clean_ward: Any, kind: str, expect: dict[str, int]
) -> None:
    _sim, v, o = clean_ward
    ends = o[o["kind"] == kind].set_index("patient_id")["ts"]
    assert len(ends) >= 5, f"too few {kind} outcomes to judge"
    deltas: dict[str, list[float]] = {k: [] for k in expect}
    for pid, end in ends.items():
        first, last = _before_outcome(v, pid, end)
        for vital in expect:
            if vital == "oxygen_or_low_spo2":
                deltas[vital].append(_hypoxaemia_rise(first, last))
            else:
                deltas[vital].append(last[vital].mean() - first[vital].mean())
    for vital, sign in expect.items():
        med = float(np.nanmedian(deltas[vital]))
        assert sign * med > 0, f"{kind}: {vital} median change {med:+.1f} has the wrong sign"


def test_outcome_ends_the_stay_and_only_deteriorations_have_one(clean_ward: Any) -> None:
    sim, v, o = clean_ward
    assert o["patient_id"].is_unique
    last_reading = v.groupby("patient_id")["ts"].max()
    after = last_reading.reindex(o["patient_id"]).to_numpy() <= o["ts"].to_numpy()
    assert after.all()
    assert set(o["kind"]) <= set(KINDS)
    assert set(o["event"]) <= {"icu_transfer", "emergency_response", "cardiac_arrest"}
    assert sim.stats.outcomes == len(o)


def test_mimics_raise_alarming_vitals_without_outcomes() -> None:
    cfg = sim_cfg(
        patients=300, hours=12, faults=NO_FAULTS,
        episodes={"deterioration_rate_per_day": 0.0, "mimic_rate_per_day": 2.0},
    )  # fmt: skip
    _sim, msgs = run(cfg)
    v, o = frames(msgs)
    assert len(o) == 0
    assert (v["heart_rate"] >= 111).mean() > 0.005  # scores NEWS2 3 for heart rate
    assert (v["temperature"].dropna() >= 38.1).any()


FAULT_CFG = {
    "missing": 0.05, "artifact": 0.01, "impossible": 0.005, "fahrenheit_device": 0.1,
    "duplicate": 0.02, "late": 0.03, "malformed": 0.01, "late_max_minutes": 20,
}  # fmt: skip


@pytest.fixture(scope="module")
def faulty() -> tuple[WardSimulator, list[tuple[str, bytes, bytes, float]]]:
    return run(sim_cfg(patients=400, hours=4, faults=FAULT_CFG))


def _close(observed: float, expected: float, n: int) -> bool:
    sd = np.sqrt(expected * (1 - expected) / n)
    return abs(observed - expected) <= 4 * sd + 1e-9


def test_fault_rates_are_honoured(faulty: Any) -> None:
    sim, _ = faulty
    s = sim.stats
    n = s.readings
    assert _close(s.artifacts / n, FAULT_CFG["artifact"], n)
    assert _close(s.impossible / n, FAULT_CFG["impossible"], n)
    assert _close(s.duplicates / n, FAULT_CFG["duplicate"] * (1 - FAULT_CFG["malformed"]), n)
    assert _close(sum(s.malformed.values()) / n, FAULT_CFG["malformed"], n)
    assert all(s.malformed[k] > 0 for k in MALFORMED_KINDS)
    share_f = sim.population.fahrenheit.mean()
    assert _close(share_f, FAULT_CFG["fahrenheit_device"], sim.population.size)
    assert s.vitals_messages == n + s.duplicates


def test_faults_are_visible_in_the_messages(faulty: Any) -> None:
    sim, msgs = faulty
    v, _ = frames(msgs)
    log = sim.fault_log
    fahr = v[
        v["event_id"].map(lambda e: "fahrenheit" in log.get(e, []) and "impossible" not in log[e])
    ]
    assert fahr["temperature"].dropna().between(93, 110).all()
    art = v[v["event_id"].map(lambda e: "artifact" in log.get(e, []))]
    assert ((art["spo2"] <= 50) | (art["heart_rate"] >= 170)).all()
    dups = v[v.duplicated("event_id", keep=False)]
    assert len(dups) == 2 * sim.stats.duplicates
    # Late messages arrive after readings that were taken later.
    emit_order = v.sort_values("emit_s")["ts"]
    assert (emit_order.diff().dt.total_seconds() < -60).sum() > 0
    late = v[v["event_id"].map(lambda e: "late" in log.get(e, []))]
    delay = late["emit_s"] - (late["ts"] - pd.Timestamp(sim.cfg.start)).dt.total_seconds()
    assert delay.between(59, 20 * 60 + 1).all()
    undecodable = sum(1 for m in msgs if m[0] == "vitals" and not m[2].endswith(b"}"))
    assert undecodable == sim.stats.malformed["bad_json"]


def test_live_and_backfill_modes_emit_in_time_order(faulty: Any) -> None:
    _, msgs = faulty
    emits = [m[3] for m in msgs]
    assert emits == sorted(emits)


@pytest.mark.parametrize("name", sorted(set(SCENARIOS) - {"baseline"}))
def test_drift_scenarios_change_the_ward(name: str) -> None:
    base_cfg = sim_cfg(patients=400, hours=6, faults=NO_FAULTS)
    drift_cfg = sim_cfg(patients=400, hours=6, faults=NO_FAULTS, scenario=name)
    b, bm = run(base_cfg)
    d, dm = run(drift_cfg)
    bv, _ = frames(bm)
    dv, _ = frames(dm)
    if name == "older_population":
        assert np.median(d.population.age) > np.median(b.population.age) + 8
        assert d.population.copd.mean() > b.population.copd.mean()
    elif name == "spo2_sensor_offset":
        # Same seed, same patients: the offset devices read lower (oxygen started for some
        # of the falsely low readings takes part of it back), the others do not.
        offset = {d.population.patient_id[i] for i in np.nonzero(d.population.spo2_offset)[0]}
        assert 0.3 < len(offset) / d.population.size < 0.7
        shift = (
            dv.groupby("patient_id")["spo2"].median() - bv.groupby("patient_id")["spo2"].median()
        )
        on = shift.index.isin(list(offset))
        assert shift[on].median() <= -2
        assert shift[~on].abs().median() == 0
        assert abs(dv["heart_rate"].mean() - bv["heart_rate"].mean()) < 1.5
    elif name == "respiratory_wave":
        assert dv["resp_rate"].mean() > bv["resp_rate"].mean() + 1.5
        assert dv["temperature"].mean() > bv["temperature"].mean() + 0.2
    else:  # a new scenario needs its own expectation here
        pytest.fail(f"no expectation for scenario {name}")


def _respiratory_signature(scenario: str) -> tuple[float, float, int]:
    """Median rise in breathing rate and in hypoxaemia (SpO2 fall, oxygen started) from
    a respiratory patient's first hour to the 45 minutes before their outcome."""
    cfg = sim_cfg(
        patients=300, hours=12, seed=3, faults=NO_FAULTS, scenario=scenario,
        episodes={"deterioration_rate_per_day": 1.0, "quiet_share": 0.0,
                  "mix": {"respiratory": 1.0}},
    )  # fmt: skip
    _sim, msgs = run(cfg)
    v, o = frames(msgs)
    rr, hyp = [], []
    for pid, end in o.set_index("patient_id")["ts"].items():
        first, last = _before_outcome(v, pid, end)
        if len(first) < 10 or len(last) < 10:
            continue
        rr.append(last["resp_rate"].mean() - first["resp_rate"].mean())
        hyp.append(_hypoxaemia_rise(first, last))
    return float(np.nanmedian(rr)), float(np.nanmedian(hyp)), len(rr)


def test_the_wave_changes_how_respiratory_deterioration_looks() -> None:
    """Concept drift, not only a new mix: in the wave most respiratory deteriorations are
    silent hypoxaemia (SpO2 falls, the breathing rate barely rises), so a model that
    learned 'fast breathing + desaturation' from the baseline ward meets a new pattern."""
    base_rr, base_hyp, n_base = _respiratory_signature("baseline")
    wave_rr, wave_hyp, n_wave = _respiratory_signature("respiratory_wave")
    assert min(n_base, n_wave) >= 20
    assert base_rr > 5  # the baseline's respiratory failure: tachypnoea
    assert wave_rr < base_rr / 2.5  # the wave's: much less of it
    assert base_hyp > 1  # both desaturate and get oxygen
    assert wave_hyp > 1
    pop = WardSimulator(sim_cfg(patients=400, scenario="respiratory_wave")).population
    resp = pop.episode_kind == KINDS.index("respiratory")
    assert not pop.silent_hypoxia[~resp].any()
    assert 0.6 < pop.silent_hypoxia[resp].mean() <= 1.0
    baseline = WardSimulator(sim_cfg(patients=400)).population
    assert not baseline.silent_hypoxia.any()


def test_unknown_scenario_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match="baseline"):
        get_scenario("zombie_apocalypse")


def test_generating_ahead_in_a_child_process_changes_nothing_sent_or_counted() -> None:
    from pipelines.produce import chunks_ahead

    cfg = sim_cfg(patients=40, hours=3, faults=FAULT_CFG)
    here = WardSimulator(cfg, record_faults=True)
    expected = list(here.messages())
    child = WardSimulator(cfg, record_faults=True)
    assert child.stats.readings == 0
    with chunks_ahead(child) as chunks:
        got = list(chunks)
    assert got == expected
    assert child.stats == here.stats
    assert child.fault_log == here.fault_log
    assert child.fault_log  # faults were injected, and counted over there


class _Broken(WardSimulator):
    def messages(self):  # type: ignore[no-untyped-def]
        yield from super().messages()
        raise ValueError("chunk generator broke")


def test_a_failure_in_the_generating_process_is_raised_with_its_traceback() -> None:
    from pipelines.produce import chunks_ahead

    sim = _Broken(sim_cfg(patients=5, hours=1))
    with pytest.raises(RuntimeError, match="chunk generator broke"), chunks_ahead(sim) as chunks:
        list(chunks)


class _Killed(WardSimulator):
    def messages(self):  # type: ignore[no-untyped-def]
        import os

        os._exit(3)
        yield from super().messages()


def test_a_generating_process_that_dies_is_reported_not_waited_for() -> None:
    from pipelines.produce import chunks_ahead

    sim = _Killed(sim_cfg(patients=5, hours=1))
    with pytest.raises(RuntimeError, match="died \\(exit code 3\\)"), chunks_ahead(sim) as chunks:
        list(chunks)
