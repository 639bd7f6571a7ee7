"""Named population-drift scenarios, used later to exercise drift detection.

A scenario is a set of multipliers and shifts over the baseline ward; ``baseline`` changes
nothing. Each one tells a story a hospital has lived through.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    age_shift: float = 0.0
    copd_mult: float = 1.0
    beta_blocker_mult: float = 1.0
    deterioration_mult: float = 1.0
    mix_mult: dict[str, float] = field(default_factory=dict)
    mimic_mult: float = 1.0
    fever_mimic_mult: float = 1.0
    # Admitted with a viral illness: febrile and breathing fast from admission, and
    # mostly recovering (their deterioration risk is the ward's).
    viral_share: float = 0.0
    spo2_offset: float = 0.0
    spo2_offset_share: float = 0.0
    # How deterioration and its look-alikes *look* (concept drift, not just a new mix):
    silent_hypoxia_share: float = 0.0  # respiratory episodes with little breathlessness
    fever_mimic_rr: float = 2.5  # breaths/min a benign fever adds at its peak
    fever_mimic_duration_mult: float = 1.0


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("baseline", "The ward as the model was trained on it."),
        Scenario(
            "respiratory_wave",
            "A respiratory-virus wave: more, and more respiratory, deteriorations; many "
            "febrile, tachypnoeic admissions who recover. Deterioration looks different "
            "too: most viral pneumonitis desaturates with little rise in breathing or heart "
            "rate (silent hypoxaemia), and long viral fevers with fast breathing settle.",
            deterioration_mult=1.8,
            mix_mult={"respiratory": 3.0, "sepsis": 1.3},
            fever_mimic_mult=4.0,
            mimic_mult=1.5,
            viral_share=0.45,
            silent_hypoxia_share=0.85,
            fever_mimic_rr=8.0,
            fever_mimic_duration_mult=2.0,
        ),
        Scenario(
            "spo2_sensor_offset",
            "A new pulse-oximeter vendor on half the beds reads SpO2 3 points low.",
            spo2_offset=-3.0,
            spo2_offset_share=0.5,
        ),
        Scenario(
            "older_population",
            "The ward now takes the frail elderly: older, more COPD, more beta-blockers.",
            age_shift=14.0,
            copd_mult=1.8,
            beta_blocker_mult=1.5,
            deterioration_mult=1.3,
        ),
    )
}


def get_scenario(name: str) -> Scenario:
    """The named scenario.

    Raises:
        KeyError: unknown name; the message lists the known ones.
    """
    try:
        return SCENARIOS[name]
    except KeyError:
        raise KeyError(
            f"unknown simulator scenario {name!r}; known: {', '.join(SCENARIOS)}"
        ) from None
