"""Vital signs over time for a whole ward, one chunk of simulated time at a time.

For every patient and reading time the true physiology is

    baseline + circadian rhythm + autocorrelated drift (Ornstein–Uhlenbeck)
             + deterioration effects + look-alike (mimic) effects + couplings

then measured by the device (measurement noise, sensor offset, rounding, cadence of
intermittent measurements). Couplings follow bedside physiology: fever raises heart rate
(~8–10 bpm per °C); bleeding raises heart rate and narrows then drops blood pressure;
respiratory failure raises the breathing rate, lowers SpO2, and oxygen gets started,
which lifts SpO2 back while the patient scores for being on oxygen.

State carried between chunks (drift values, oxygen started) keeps the series continuous.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.signal import lfilter

from features.news2 import TRIGGERS, monitoring_interval_minutes, news2
from pipelines.simulator.population import KINDS, MAX_MIMICS, NO_EPISODE, Population
from stack.settings import SimulatorSettings

F = npt.NDArray[np.float64]

# vital: (drift sd, drift time constant in minutes, measurement noise sd, circadian amplitude)
NOISE: dict[str, tuple[float, float, float, float]] = {
    "heart_rate": (3.5, 20.0, 1.5, 4.0),
    "systolic_bp": (5.0, 40.0, 3.0, 6.0),
    "diastolic_bp": (3.0, 40.0, 2.5, 4.0),
    "spo2": (0.7, 10.0, 0.6, 0.0),
    "resp_rate": (1.2, 15.0, 0.9, 0.8),
    "temperature": (0.12, 90.0, 0.08, 0.3),
}
CLAMP: dict[str, tuple[float, float]] = {
    "heart_rate": (25, 220),
    "systolic_bp": (50, 240),
    "diastolic_bp": (25, 150),
    "spo2": (50, 100),
    "resp_rate": (4, 60),
    "temperature": (33.0, 42.5),
}
CADENCE_FIELD = {
    "heart_rate": "heart_rate",
    "systolic_bp": "blood_pressure",
    "diastolic_bp": "blood_pressure",
    "spo2": "spo2",
    "resp_rate": "resp_rate",
    "temperature": "temperature",
}
# Vital-sign shift per unit of admission acuity (``Population.acuity``).
ACUITY_EFFECT = {
    "heart_rate": 5.0, "resp_rate": 1.6, "temperature": 0.2, "spo2": -0.5, "systolic_bp": -5.0,
}  # fmt: skip
# A deterioration that settles by itself peaks at this share of the magnitude a
# progressing one reaches: most are turned around before they become critical.
RESOLVING_PEAK = 0.6
AVPU_THRESHOLDS = (0.55, 0.8, 0.92, 0.99)  # confusion score → A, C, V, P, U
O2_BOOST = 4.5
O2_START_MINUTES = 5.0


@dataclass
class WardState:
    """What one chunk hands to the next: drift values, who is on oxygen, and the ward's
    care so far (when the next observation set is due, who is on continuous monitoring,
    who was escalated, whose deterioration was turned around and so has no outcome)."""

    drift: dict[str, F]
    on_o2: npt.NDArray[np.bool_]
    outcome_min: F  # +inf: no outcome (none due, resolved, or rescued)
    next_set_min: F  # next observation set (news2_tier) or score review (continuous)
    continuous: npt.NDArray[np.bool_]  # on continuous monitoring (news2_tier: score >= 7)
    escalated: npt.NDArray[np.bool_]  # the ward responded to a trigger during the episode
    rescue_min: F  # treatment that works takes effect here (+inf: none)
    rescue_severity: F  # severity when it took effect, decaying from there
    low_run: npt.NDArray[np.int64]  # steps in a row the SpO2 reading was below the O2 start
    sets: int = 0  # observation sets (or reviews) so far
    escalations: int = 0
    rescues: int = 0

    @classmethod
    def initial(cls, pop: Population, rng: np.random.Generator) -> WardState:
        drift = {v: rng.normal(0, sd, pop.size) for v, (sd, _t, _m, _c) in NOISE.items()}
        return cls(
            drift=drift,
            on_o2=pop.baseline_o2.copy(),
            outcome_min=pop.outcome_min.copy(),
            next_set_min=pop.admit_min.copy(),
            continuous=np.zeros(pop.size, dtype=bool),
            escalated=np.zeros(pop.size, dtype=bool),
            rescue_min=np.full(pop.size, np.inf),
            rescue_severity=np.zeros(pop.size),
            low_run=np.zeros(pop.size, dtype=np.int64),
        )


@dataclass(frozen=True)
class Readings:
    """Flattened readings of one chunk (one entry per patient per reading time)."""

    patient: npt.NDArray[np.int64]
    ts_s: F  # seconds since simulation start, with the device's phase and jitter
    values: dict[str, F]  # NaN where not measured
    avpu: npt.NDArray[np.int64]  # index into AVPU, -1 where not assessed
    on_oxygen: npt.NDArray[np.bool_]

    def __len__(self) -> int:
        return len(self.patient)


def _ou(rng: np.random.Generator, start: F, sd: float, tau_min: float, dt_min: float, t: int) -> F:
    a = float(np.exp(-dt_min / tau_min))
    shocks = rng.normal(0, sd * np.sqrt(1 - a * a), (start.size, t))
    out, _ = lfilter([1.0], [1.0, -a], shocks, axis=1, zi=(a * start)[:, None])
    return np.asarray(out)


def _trapezoid(tt: F, start: F, dur: F, ramp: float = 5.0) -> F:
    up = (tt - start) / ramp
    down = (start + dur - tt) / ramp
    return np.clip(np.minimum(np.minimum(up, down), 1.0), 0.0, 1.0)


def _bell(tt: F, start: F, dur: F) -> F:
    u = (tt - start) / dur
    return np.where((u >= 0) & (u <= 1), np.sin(np.pi * np.clip(u, 0, 1)), 0.0)


def generate_chunk(
    pop: Population,
    cfg: SimulatorSettings,
    state: WardState,
    first_step: int,
    steps: int,
    rng: np.random.Generator,
) -> Readings:
    """Readings for steps ``[first_step, first_step + steps)``; updates ``state`` in place."""
    dt_min = cfg.interval_s / 60.0
    k = np.arange(first_step, first_step + steps)
    t_min = (k * dt_min).astype(np.float64)
    tt = t_min[None, :]
    p = pop.size
    col = (slice(None), None)

    hour = (cfg.start.hour + cfg.start.minute / 60 + t_min / 60.0) % 24
    circ = np.cos(2 * np.pi * (hour - 16.0) / 24.0)[None, :]  # peak mid-afternoon

    # --- deterioration severity s(t) in [0, ~1.2]
    kind = pop.episode_kind[col]
    s = severity(pop, tt, state, cfg.rescue.recovery_minutes)
    is_k = {name: kind == i for i, name in enumerate(KINDS)}
    sep, resp, hypo, card = (s * is_k[n] for n in KINDS)
    brady = pop.brady[col]
    cold = pop.cold_sepsis[col]
    # Silent hypoxaemia (viral pneumonitis): SpO2 falls further while the breathing and
    # heart rate barely rise and the patient stays lucid until late (Tobin et al.,
    # Am J Respir Crit Care Med 2020;202:356-360).
    silent = pop.silent_hypoxia[col]
    resp_rr = resp * np.where(silent, 0.15, 1.0)
    resp_hr = resp * np.where(silent, 0.3, 1.0)
    resp_spo2 = resp * np.where(silent, 1.2, 1.0)
    resp_conf = resp * np.where(silent, 0.4, 1.0)

    d = {v: np.zeros((p, steps)) for v in NOISE}
    d["temperature"] += np.where(cold, -0.9, 1.9) * sep + 0.6 * resp - 0.3 * hypo
    d["heart_rate"] += 20 * sep + 18 * resp_hr + 42 * hypo + np.where(brady, -32, 48) * card
    d["resp_rate"] += 9 * sep + 13 * resp_rr + 6 * hypo + 8 * card
    d["systolic_bp"] += -38 * sep**2 + 5 * resp - 42 * hypo**1.5 - 32 * card
    d["diastolic_bp"] += -20 * sep**2 + 3 * resp - 18 * hypo**1.5 - 14 * card
    d["spo2"] += -3.5 * sep - 11 * resp_spo2 - 1.5 * hypo - 6 * card
    confusion = sep + 0.75 * resp_conf * np.where(pop.hypercapnic[col], 1.3, 1.0) + 0.85 * hypo**1.5
    confusion = confusion + 0.85 * card

    # --- mimics: alarming but benign
    for j in range(MAX_MIMICS):
        mk = pop.mimic_kind[:, j][:, None]
        if not (mk >= 0).any():
            continue
        st, du = pop.mimic_start[:, j][:, None], pop.mimic_duration[:, j][:, None]
        mag = pop.mimic_magnitude[:, j][:, None]
        pain = _trapezoid(tt, st, du) * mag * (mk == 0)
        fever = _bell(tt, st, du) * mag * (mk == 1)
        desat = _trapezoid(tt, st, du, ramp=3.0) * mag * (mk == 2)
        d["heart_rate"] += 24 * pain
        d["resp_rate"] += 6 * pain + pop.fever_mimic_rr * fever - 1.0 * desat
        d["systolic_bp"] += 18 * pain
        d["diastolic_bp"] += 10 * pain
        d["temperature"] += 1.6 * fever
        d["spo2"] += -6 * desat

    # --- acuity at admission: an acutely ill patient runs faster, warmer, lower
    for v, per_unit in ACUITY_EFFECT.items():
        d[v] += per_unit * pop.acuity[col]

    # --- coupling: fever raises heart rate
    d["heart_rate"] += 8.0 * np.clip(d["temperature"], 0, None)

    base = {
        "heart_rate": pop.hr,
        "systolic_bp": pop.sbp,
        "diastolic_bp": pop.dbp,
        "spo2": pop.spo2,
        "resp_rate": pop.rr,
        "temperature": pop.temp,
    }
    values: dict[str, F] = {}
    for v, (sd, tau, meas, amp) in NOISE.items():
        drift = _ou(rng, state.drift[v], sd, tau, dt_min, steps)
        state.drift[v] = drift[:, -1].copy()
        true = base[v][col] + amp * circ + drift + d[v]
        values[v] = true + rng.normal(0, meas, (p, steps))

    # Beta-blockers blunt the tachycardic response.
    bb = pop.beta_blocker[col]
    values["heart_rate"] = np.where(
        bb, pop.hr[col] + 0.6 * (values["heart_rate"] - pop.hr[col]), values["heart_rate"]
    )

    # --- the oximeter (vendor offset), then oxygen therapy in response to what it shows
    spo2 = values["spo2"] + pop.spo2_offset[col]
    # Oxygen is started below the patient's usual range: 86 % for hypercapnic COPD (target
    # 88-92 %), 90 % for other COPD (who live at 92-95 %), 91.5 % for everyone else.
    start_below = np.select([pop.hypercapnic, pop.copd], [86.0, 90.0], 91.5)
    # A nurse starts it on a sustained fall (O2_START_MINUTES in a row), not on a blip.
    low = spo2 < start_below[:, None]
    step = np.arange(steps)[None, :]
    last_ok = np.maximum.accumulate(np.where(low, -1, step), axis=1)
    run = np.where(last_ok < 0, state.low_run[:, None] + step + 1, step - last_ok)
    state.low_run = run[:, -1].copy()
    need = run * dt_min >= O2_START_MINUTES
    on_o2 = np.logical_or.accumulate(np.concatenate([state.on_o2[:, None], need], axis=1), axis=1)
    on_o2 = on_o2[:, 1:]
    state.on_o2 = on_o2[:, -1].copy()
    values["spo2"] = spo2 + O2_BOOST * on_o2 * np.clip(1.0 - 0.5 * s, 0.3, 1.0)

    for v, (lo, hi) in CLAMP.items():
        values[v] = np.clip(values[v], lo, hi)
    values["diastolic_bp"] = np.minimum(values["diastolic_bp"], values["systolic_bp"] - 12)
    for v in ("heart_rate", "systolic_bp", "diastolic_bp", "spo2", "resp_rate"):
        values[v] = np.rint(values[v])
    values["temperature"] = np.round(values["temperature"], 1)

    conf = confusion + rng.normal(0, 0.05, (p, steps))
    avpu = np.searchsorted(np.array(AVPU_THRESHOLDS), conf).astype(np.int64)

    # --- the ward's care: observation sets (or score reviews) and escalation, step by step
    care_rng = np.random.default_rng([cfg.seed, 5, first_step])
    chunk_end_min = float((first_step + steps) * dt_min)
    sets, cont = _observe(pop, cfg, state, t_min, values, avpu, on_o2, care_rng, chunk_end_min)

    # --- measurement cadence: continuous monitors every step, cuff and nurse less often;
    # on a ward charting observation sets, a vital is measured at a set (or by the
    # monitor while the patient is on continuous monitoring)
    intermittent = cfg.observation.mode == "news2_tier"
    for v in NOISE:
        every = max(1, round(getattr(cfg.cadence, CADENCE_FIELD[v]) * 60 / cfg.interval_s))
        measured = ((k[None, :] + pop.cadence_phase[:, None]) % every) == 0
        if intermittent:
            measured = sets | (cont & measured)
        values[v] = np.where(measured, values[v], np.nan)
    every = max(1, round(cfg.cadence.consciousness * 60 / cfg.interval_s))
    assessed = ((k[None, :] + pop.cadence_phase[:, None] + 7) % every) == 0
    if intermittent:
        assessed = sets | (cont & assessed)
    avpu = np.where(assessed, avpu, -1)

    # Readings are taken from admission until the outcome (the patient leaves the ward).
    ts_grid = k[None, :] * cfg.interval_s + pop.phase_s[:, None] + rng.uniform(0, 2.0, (p, steps))
    present = (ts_grid >= pop.admit_min[col] * 60) & (ts_grid < state.outcome_min[col] * 60)
    if intermittent:  # only steps where something was measured make a reading
        present &= assessed | np.any([~np.isnan(a) for a in values.values()], axis=0)
    pi, si = np.nonzero(present)
    ts_s = ts_grid[pi, si]
    return Readings(
        patient=pi.astype(np.int64),
        ts_s=ts_s,
        values={v: a[pi, si] for v, a in values.items()},
        avpu=avpu[pi, si],
        on_oxygen=on_o2[pi, si],
    )


def severity(pop: Population, tt: F, state: WardState, recovery_minutes: float) -> F:
    """Deterioration severity at minutes ``tt`` (``[1, steps]`` or ``[patients, 1]``).

    A progressing episode rises as ``u ** shape`` over its duration to its magnitude (the
    outcome comes at its end); one that resolves on its own rises and falls back as a
    half sine; one the ward rescued decays from its severity when treatment took effect.
    """
    col = (slice(None), None)
    kind = pop.episode_kind[col]
    u = np.clip((tt - pop.onset_min[col]) / pop.duration_min[col], 0.0, 1.0)
    rising = u ** pop.shape[col] * pop.magnitude[col]
    settling = np.sin(np.pi * u) * pop.magnitude[col] * RESOLVING_PEAK
    s = np.where(kind >= 0, np.where(pop.recovers[col], settling, rising), 0.0)
    start = state.rescue_min[col]
    after = tt >= start
    since = np.where(after, tt - np.where(np.isfinite(start), start, 0.0), 0.0)
    decayed = state.rescue_severity[col] * np.exp(-since / recovery_minutes)
    return np.where(after, np.minimum(s, decayed), s)


def _observe(
    pop: Population,
    cfg: SimulatorSettings,
    state: WardState,
    t_min: F,
    values: dict[str, F],
    avpu: npt.NDArray[np.int64],
    on_o2: npt.NDArray[np.bool_],
    rng: np.random.Generator,
    chunk_end_min: float,
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """Walk the chunk's steps: chart observation sets when due, score them with NEWS2,
    schedule the next one (RCP 2017 chart 3), and escalate at the ward's trigger.

    Returns ``(sets, continuous)`` as ``[patients, steps]`` masks: a set charted at that
    step, and the patient on continuous monitoring then. On a continuously monitored ward
    the "sets" are the periodic score reviews; nothing is masked by them.
    """
    obs = cfg.observation
    p, steps = avpu.shape
    sets = np.zeros((p, steps), dtype=bool)
    cont = np.zeros((p, steps), dtype=bool)
    intermittent = obs.mode == "news2_tier"
    for j in range(steps):
        t = float(t_min[j])
        due = (state.next_set_min <= t) & (pop.admit_min <= t) & (t < state.outcome_min)
        idx = np.flatnonzero(due)
        if idx.size:
            score = news2(
                resp_rate=values["resp_rate"][idx, j],
                spo2=values["spo2"][idx, j],
                on_oxygen=on_o2[idx, j].astype(np.float64),
                systolic_bp=values["systolic_bp"][idx, j],
                heart_rate=values["heart_rate"][idx, j],
                avpu_rank=avpu[idx, j].astype(np.float64),
                temperature=values["temperature"][idx, j],
                scale2=pop.hypercapnic[idx].astype(np.float64),
            )
            if intermittent:
                gap = monitoring_interval_minutes(
                    score["total"], score["red"], low_score_hours=obs.low_score_hours
                )
                on_monitor = gap == 0
                late = 1.0 + obs.late_share * rng.random(idx.size)
                state.continuous[idx] = on_monitor
                state.next_set_min[idx] = t + np.where(on_monitor, obs.review_minutes, gap * late)
            else:
                state.next_set_min[idx] = t + obs.review_minutes
            sets[idx, j] = True
            state.sets += int(idx.size)
            _escalate(pop, cfg, state, idx, score, t, rng, chunk_end_min)
        cont[:, j] = state.continuous
    return sets, cont


def _escalate(
    pop: Population,
    cfg: SimulatorSettings,
    state: WardState,
    idx: npt.NDArray[np.int64],
    score: dict[str, F],
    t: float,
    rng: np.random.Generator,
    chunk_end_min: float,
) -> None:
    """Usual care at a trigger: a share of triggers get a response; treatment starts after
    the delay (no earlier than the end of the simulated chunk, so a chunk's physiology is
    fixed once drawn) and, for a share of progressing deteriorations whose outcome has not
    come yet, turns the course: the outcome is averted and severity decays."""
    rescue = cfg.rescue
    draw = rng.random((2, idx.size))  # drawn whatever the trigger, so streams stay aligned
    if rescue.trigger == "none":
        return
    fires = TRIGGERS[rescue.trigger].fires(score["total"], score["red"])
    progressing = (pop.episode_kind[idx] != NO_EPISODE) & ~pop.recovers[idx]
    progressing &= pop.onset_min[idx] <= t
    respond = fires & progressing & ~state.escalated[idx] & (draw[0] < rescue.response_share)
    state.escalated[idx[respond]] = True
    state.escalations += int(respond.sum())
    start = max(t + rescue.delay_minutes, chunk_end_min)
    works = respond & (draw[1] < rescue.success_share) & (state.outcome_min[idx] > start)
    who = idx[works]
    if who.size == 0:
        return
    at = np.full((pop.size, 1), start)
    state.rescue_severity[who] = severity(pop, at, state, rescue.recovery_minutes)[who, 0]
    state.rescue_min[who] = start
    state.outcome_min[who] = np.inf
    state.rescues += int(who.size)
