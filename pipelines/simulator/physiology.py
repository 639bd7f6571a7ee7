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

from pipelines.simulator.population import KINDS, MAX_MIMICS, Population
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
AVPU_THRESHOLDS = (0.55, 0.8, 0.92, 0.99)  # confusion score → A, C, V, P, U
O2_BOOST = 4.5


@dataclass
class WardState:
    """What one chunk hands to the next: drift values and who is on oxygen."""

    drift: dict[str, F]
    on_o2: npt.NDArray[np.bool_]

    @classmethod
    def initial(cls, pop: Population, rng: np.random.Generator) -> WardState:
        drift = {v: rng.normal(0, sd, pop.size) for v, (sd, _t, _m, _c) in NOISE.items()}
        return cls(drift=drift, on_o2=pop.baseline_o2.copy())


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
    u = np.clip((tt - pop.onset_min[col]) / pop.duration_min[col], 0.0, 1.0)
    s = np.where(kind >= 0, u ** pop.shape[col] * pop.magnitude[col], 0.0)
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
    need = spo2 < start_below[:, None]
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

    # --- measurement cadence: continuous monitors every step, cuff and nurse less often
    for v in NOISE:
        every = max(1, round(getattr(cfg.cadence, CADENCE_FIELD[v]) * 60 / cfg.interval_s))
        measured = ((k[None, :] + pop.cadence_phase[:, None]) % every) == 0
        values[v] = np.where(measured, values[v], np.nan)
    every = max(1, round(cfg.cadence.consciousness * 60 / cfg.interval_s))
    assessed = ((k[None, :] + pop.cadence_phase[:, None] + 7) % every) == 0
    avpu = np.where(assessed, avpu, -1)

    # Readings are taken from admission until the outcome (the patient leaves the ward).
    ts_grid = k[None, :] * cfg.interval_s + pop.phase_s[:, None] + rng.uniform(0, 2.0, (p, steps))
    present = (ts_grid >= pop.admit_min[col] * 60) & (ts_grid < pop.outcome_min[col] * 60)
    pi, si = np.nonzero(present)
    ts_s = ts_grid[pi, si]
    return Readings(
        patient=pi.astype(np.int64),
        ts_s=ts_s,
        values={v: a[pi, si] for v, a in values.items()},
        avpu=avpu[pi, si],
        on_oxygen=on_o2[pi, si],
    )
