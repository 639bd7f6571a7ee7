"""Who is on the ward: patients, their baselines, and the episodes their stay will hold.

Everything is drawn once per run from the seed, as arrays over patients (struct of arrays),
so that the vital-sign generator can work on whole wards at a time.

Physiology behind the numbers (adult ward patients):
- Resting heart rate ~75 bpm (sd ~10), lower on beta-blockers (~-12 bpm).
- Systolic BP rises with age (~+0.5 mmHg/year over 40) and with treated hypertension.
- SpO2 96–99 % in healthy lungs. Patients with COPD and *confirmed hypercapnic
  respiratory failure* live at 88–92 % on purpose (the BTS target range; O'Driscoll et
  al., BTS guideline for oxygen use, Thorax 2017;72:i1-i90), and only their chart
  prescribes NEWS2's SpO2 scale 2 (RCP 2017, section 5). They are a minority of COPD
  (``population.hypercapnic_share_of_copd``, default 0.35: chronic hypercapnia is
  reported in roughly a fifth to two fifths of COPD patients admitted to hospital); the
  others sit at 92–95 % and are charted on scale 1 like everyone else.
- Respiratory rate 12–20/min, higher in COPD; temperature 36.3–37.3 °C.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from pipelines.simulator.scenarios import Scenario
from stack.contracts import DeteriorationKind, OutcomeEventKind
from stack.settings import SimulatorSettings

F = npt.NDArray[np.float64]
B = npt.NDArray[np.bool_]
I = npt.NDArray[np.int64]  # noqa: E741

KINDS: tuple[DeteriorationKind, ...] = ("sepsis", "respiratory", "hypovolaemic", "cardiac")
NO_EPISODE = -1
MIMICS = ("pain_anxiety", "benign_fever", "night_desaturation")
MAX_MIMICS = 4


@dataclass(frozen=True)
class Population:
    """Arrays over patients; index ``i`` is the same patient in every array."""

    patient_id: list[str]
    device_id: list[str]
    age: F
    female: B
    copd: B
    hypercapnic: B  # COPD with chronic hypercapnic respiratory failure: SpO2 scale 2
    beta_blocker: B
    hypertension: B
    admit_min: F  # minutes after simulation start
    # baselines
    hr: F
    sbp: F
    dbp: F
    spo2: F
    rr: F
    temp: F
    baseline_o2: B
    # devices
    fahrenheit: B
    spo2_offset: F
    phase_s: F  # offset of this monitor's readings within each interval
    cadence_phase: I  # staggers intermittent measurements between patients
    # deterioration episode (at most one per stay)
    episode_kind: I  # index into KINDS, or NO_EPISODE
    onset_min: F
    duration_min: F
    magnitude: F  # < 0.6 for quiet deteriorations
    shape: F  # ramp exponent: >1 accelerates late, <1 declares itself early
    cold_sepsis: B  # septic without fever (commoner in the old)
    silent_hypoxia: B  # respiratory episodes that desaturate without much breathlessness
    brady: B  # cardiac episodes that slow the heart instead
    outcome_event: list[str]
    recovers: B  # the episode peaks and resolves on its own: no outcome
    acuity: F  # how ill on admission (>= 0): shifts the vitals for the whole stay
    # look-alikes that end well
    mimic_kind: I  # (P, MAX_MIMICS), -1 = none
    mimic_start: F
    mimic_duration: F
    mimic_magnitude: F
    fever_mimic_rr: float = 2.5  # breaths/min added at the peak of a benign fever

    @property
    def size(self) -> int:
        return len(self.patient_id)

    @property
    def outcome_min(self) -> F:
        """Minute of the outcome event if nothing intervenes; +inf for patients without
        an episode or whose episode resolves on its own (the ward's rescues are decided
        while the stay runs, in ``physiology.WardState``)."""
        out = np.full(self.size, np.inf)
        has = (self.episode_kind != NO_EPISODE) & ~self.recovers
        out[has] = self.onset_min[has] + self.duration_min[has]
        return out


def _hex_ids(rng: np.random.Generator, n: int, prefix: str) -> list[str]:
    raw = rng.integers(0, 2**48, size=n, dtype=np.int64)
    return [f"{prefix}{v:012x}" for v in raw.tolist()]


# Cardiac episodes end in an arrest several times more often than the others.
CARDIAC_ARREST_WEIGHT = 4.0


def _outcome_events(mix: Mapping[OutcomeEventKind, float], kind: I, draw: F) -> list[str]:
    """The outcome event of each episode from ``mix`` (weights per event), cardiac
    episodes :data:`CARDIAC_ARREST_WEIGHT` times as arrest-prone, the overall mix kept."""
    events = list(mix)
    w = np.array([mix[e] for e in events], dtype=np.float64)
    w = w / w.sum()
    cardiac = kind == KINDS.index("cardiac")
    out = np.empty(len(kind), dtype=object)
    arrest = events.index("cardiac_arrest") if "cardiac_arrest" in events else -1
    for is_cardiac in (False, True):
        sel = cardiac == is_cardiac
        wk = w.copy()
        if arrest >= 0 and is_cardiac:
            wk[arrest] *= CARDIAC_ARREST_WEIGHT
        elif arrest >= 0:
            # Lower the others' share so that the whole ward keeps the configured mix.
            share = float(np.mean(cardiac)) if len(kind) else 0.0
            wk[arrest] = max(0.0, w[arrest] * (1 - CARDIAC_ARREST_WEIGHT * share)) / max(
                1e-9, 1 - share
            )
        wk = wk / wk.sum()
        idx = np.minimum(np.searchsorted(np.cumsum(wk), draw[sel], side="right"), len(wk) - 1)
        out[sel] = [events[i] for i in idx.tolist()]
    return out.tolist()


def draw_population(cfg: SimulatorSettings, scenario: Scenario) -> Population:
    """Draw the ward for this seed and scenario."""
    rng = np.random.default_rng([cfg.seed, 1])
    n = cfg.patients
    pop = cfg.population
    minutes = cfg.hours * 60.0

    age = np.clip(rng.normal(pop.age_mean + scenario.age_shift, pop.age_sd, n), 18, 100)
    female = rng.random(n) < pop.female_share
    old = (age - 60) / 20
    copd_p = np.clip(pop.copd_share * scenario.copd_mult * (1 + 0.6 * old), 0, 0.9)
    copd = rng.random(n) < copd_p
    beta_blocker = rng.random(n) < np.clip(
        pop.beta_blocker_share * scenario.beta_blocker_mult * (1 + 0.5 * old), 0, 0.9
    )
    hypertension = rng.random(n) < np.clip(pop.hypertension_share * (1 + 0.5 * old), 0, 0.95)

    hr = rng.normal(76, 9, n) - 12 * beta_blocker + 3 * female + 3 * copd
    hr = np.clip(hr, 48, 110)
    sbp = rng.normal(118, 11, n) + 0.45 * np.clip(age - 40, 0, None) + 14 * hypertension
    sbp -= 4 * female
    dbp = np.clip(sbp * rng.normal(0.6, 0.04, n), 45, 105)
    spo2 = np.where(copd, rng.uniform(88, 92, n), np.clip(rng.normal(97.3, 1.0, n), 94.5, 99.5))
    spo2 -= np.clip(age - 70, 0, None) * 0.03 * ~copd
    rr = np.where(copd, rng.normal(20, 1.5, n), rng.normal(15.5, 1.5, n))
    temp = rng.normal(36.75, 0.22, n) - 0.003 * np.clip(age - 65, 0, None)
    baseline_o2 = copd & (rng.random(n) < 0.3)

    fahrenheit = rng.random(n) < cfg.faults.fahrenheit_device
    offset_dev = rng.random(n) < scenario.spo2_offset_share
    spo2_offset = np.where(offset_dev, scenario.spo2_offset, 0.0)

    admit = rng.uniform(0, pop.admit_spread * minutes, n)

    # Deterioration: risk rises with age and comorbidity; the mean stays at the configured rate.
    ep = cfg.episodes
    days = minutes / 1440.0
    risk = np.exp(0.5 * old + 0.5 * copd + 0.3 * hypertension)
    risk = risk / risk.mean() * ep.simulated_rate_per_day * scenario.deterioration_mult * days
    has_episode = rng.random(n) < np.clip(risk, 0, 0.95)

    weights = np.array([ep.mix.get(k, 0.0) * scenario.mix_mult.get(k, 1.0) for k in KINDS])
    kind_w = np.tile(weights, (n, 1))
    kind_w[:, KINDS.index("respiratory")] *= np.where(copd, 2.5, 1.0)
    kind_w[:, KINDS.index("cardiac")] *= np.where(hypertension | (age > 75), 1.6, 1.0)
    kind_w /= kind_w.sum(axis=1, keepdims=True)
    kind = (rng.random((n, 1)) > np.cumsum(kind_w, axis=1)).sum(axis=1)
    kind = np.minimum(kind, len(KINDS) - 1)

    duration = np.exp(rng.uniform(np.log(ep.min_hours * 60), np.log(ep.max_hours * 60), n))
    duration = np.where(kind == KINDS.index("cardiac"), duration * 0.5, duration)
    # Onset anywhere after the first hours of the stay; the outcome may fall after the end
    # of the window (a censored stay: the data shows the start of a deterioration only).
    earliest = admit + 120.0
    onset = earliest + rng.random(n) * np.maximum(minutes - earliest - 60.0, 1.0)
    quiet = rng.random(n) < ep.quiet_share
    magnitude = np.where(quiet, rng.uniform(0.35, 0.6, n), rng.uniform(0.75, 1.2, n))
    shape = np.exp(rng.uniform(np.log(0.7), np.log(3.0), n))
    cold = (rng.random(n) < np.where(age > 75, 0.35, 0.15)) & (kind == KINDS.index("sepsis"))
    brady = (rng.random(n) < 0.3) & (kind == KINDS.index("cardiac"))
    event_draw = rng.random(n)
    outcome_event = _outcome_events(ep.outcome_mix, kind, event_draw)
    episode_kind = np.where(has_episode, kind, NO_EPISODE).astype(np.int64)

    # Mimics: Poisson count per stay, placed uniformly, unrelated to outcomes.
    lam = ep.mimic_rate_per_day * scenario.mimic_mult * days
    count = np.minimum(rng.poisson(lam, n), MAX_MIMICS)
    slot = np.arange(MAX_MIMICS)[None, :] < count[:, None]
    m_kind_w = np.tile([0.55, 0.30 * scenario.fever_mimic_mult, 0.15], (n, 1))
    m_kind_w[:, 2] *= np.where(copd, 3.0, 0.5)
    m_kind_w /= m_kind_w.sum(axis=1, keepdims=True)
    r = rng.random((n, MAX_MIMICS))
    cum = np.cumsum(m_kind_w, axis=1)
    m_kind = (r[:, :, None] > cum[:, None, :]).sum(axis=2).astype(np.int64)
    m_kind = np.where(slot, np.minimum(m_kind, len(MIMICS) - 1), -1)
    m_start = admit[:, None] + rng.random((n, MAX_MIMICS)) * (minutes - admit[:, None])
    m_dur = np.select(
        [m_kind == 0, m_kind == 1],
        [
            rng.uniform(20, 120, (n, MAX_MIMICS)),
            rng.uniform(180, 480, (n, MAX_MIMICS)) * scenario.fever_mimic_duration_mult,
        ],
        rng.uniform(10, 40, (n, MAX_MIMICS)),
    )
    m_mag = rng.uniform(0.6, 1.3, (n, MAX_MIMICS))
    patient_id = _hex_ids(rng, n, "pt-")
    device_id = _hex_ids(rng, n, "dev-")
    phase_s = rng.uniform(0, cfg.interval_s, n)
    cadence_phase = rng.integers(0, 10_000, n)
    # Drawn last, so that a scenario without it leaves every earlier draw (and the
    # baseline ward) exactly as it was.
    silent = rng.random(n) < scenario.silent_hypoxia_share
    silent &= episode_kind == KINDS.index("respiratory")
    viral = rng.random(n) < scenario.viral_share
    temp = temp + viral * rng.uniform(0.5, 1.3, n)
    rr = rr + viral * rng.uniform(3.0, 8.0, n)
    # Only the hypercapnic share of COPD targets 88-92 %; the rest live at 92-95 %.
    hypercapnic = copd & (rng.random(n) < pop.hypercapnic_share_of_copd)
    spo2 = np.where(copd & ~hypercapnic, rng.uniform(92, 95, n), spo2)
    baseline_o2 &= hypercapnic
    # Deteriorations that peak and settle by themselves (no outcome).
    recovers = (rng.random(n) < ep.recover_share) & (episode_kind != NO_EPISODE)
    # Acuity at admission: how ill the patient came in. Those who deteriorate were often
    # sicker from the start (an admission NEWS predicts later deterioration), so a
    # deterioration is likelier the higher the acuity, which shows in the baseline vitals
    # (faster heart and breathing, warmer, lower SpO2 and blood pressure).
    # The baselines above stay the patient's usual values; ``physiology`` adds the acuity.
    acuity = np.abs(rng.normal(0.0, 1.0, n)) * ep.acuity_sd
    acuity += np.where(episode_kind != NO_EPISODE, ep.acuity_shift, 0.0)

    return Population(
        patient_id=patient_id,
        device_id=device_id,
        age=age,
        female=female,
        copd=copd,
        hypercapnic=hypercapnic,
        beta_blocker=beta_blocker,
        hypertension=hypertension,
        admit_min=admit,
        hr=hr,
        sbp=sbp,
        dbp=dbp,
        spo2=spo2,
        rr=rr,
        temp=temp,
        baseline_o2=baseline_o2,
        fahrenheit=fahrenheit,
        spo2_offset=spo2_offset,
        phase_s=phase_s,
        cadence_phase=cadence_phase,
        episode_kind=episode_kind,
        onset_min=onset,
        duration_min=duration,
        magnitude=magnitude,
        shape=shape,
        cold_sepsis=cold,
        silent_hypoxia=silent,
        brady=brady,
        outcome_event=outcome_event,
        recovers=recovers,
        acuity=acuity,
        mimic_kind=m_kind,
        mimic_start=m_start,
        mimic_duration=m_dur,
        mimic_magnitude=m_mag,
        fever_mimic_rr=scenario.fever_mimic_rr,
    )
