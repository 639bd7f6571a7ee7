"""A labelled feature table straight from the simulator, in process (no Kafka, no Spark).

The production path is simulator → Kafka → raw lake → Spark ETL → Spark features; this
module runs the *same* pure functions (contract validation, ``clean_events``,
``to_minutes``, ``features_for_patient``, ``make_labels``) on the simulator's messages
in memory. Downstream stages use it where the broker and Spark are not the point:
training benchmarks on the standard cohort, and tests of training, the gate and
monitoring. The integration tests of the feature job prove both routes give the same
rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pyarrow as pa

from features.cleaning import STATUS_OK, clean_events
from features.labels import make_labels
from features.resample import to_minutes
from features.spec import FEATURES_ZONE, LABELS_FILE
from features.transform import features_for_patient, static_vector
from pipelines.simulator.engine import WardSimulator
from stack.batchvalidate import BatchValidator
from stack.catalog import RAW_OUTCOMES
from stack.contracts import AdmissionEvent, OutcomeEvent, VitalsEvent
from stack.lake import Lake
from stack.settings import FeaturesSettings, SimulatorSettings


@dataclass(frozen=True)
class Cohort:
    """What the feature job would have written: feature rows, their labels, the facts."""

    features: pd.DataFrame  # patient_id, ts, FEATURE_NAMES
    labels: pd.DataFrame  # features.labels.make_labels columns
    admissions: pd.DataFrame
    outcomes: pd.DataFrame
    # With ``keep_stages=True`` (the EDA report's tests): what the lake's raw, processed
    # and quarantine zones would hold.
    raw: pd.DataFrame | None = None
    minutes: pd.DataFrame | None = None
    quarantine: pd.DataFrame | None = None
    sim_stats: dict[str, Any] = field(default_factory=dict)  # what the simulator sent

    def to_lake(self, lake: Lake, part: str = "part-0") -> None:
        """Write features, labels and outcomes where the feature job and landing would.

        Args:
            part: file name inside each hourly partition; cohorts with different names
                add to the lake (a later period of the ward, another scenario) instead of
                replacing each other. Labels are merged into the one labels file.
        """
        f = self.features
        for hour, rows in f.groupby(f["ts"].dt.floor("h")):
            rel = f"{FEATURES_ZONE}/date={hour:%Y-%m-%d}/hour={hour:%H}/{part}.parquet"
            lake.write_parquet(pa.Table.from_pandas(rows, preserve_index=False), rel)
        o = self.outcomes
        for hour, rows in o.groupby(o["ts"].dt.floor("h")):
            rel = f"{RAW_OUTCOMES}/date={hour:%Y-%m-%d}/hour={hour:%H}/{part}.parquet"
            lake.write_parquet(pa.Table.from_pandas(rows, preserve_index=False), rel)
        labels = self.labels
        if lake.exists(LABELS_FILE):
            old = lake.read_table(LABELS_FILE).to_pandas()
            labels = pd.concat([old, labels], ignore_index=True).drop_duplicates(
                ["patient_id", "ts"], keep="last"
            )
        lake.write_parquet(pa.Table.from_pandas(labels, preserve_index=False), LABELS_FILE)


def _messages(
    cfg: SimulatorSettings,
) -> tuple[list[bytes], list[bytes], list[bytes], dict[str, Any]]:
    vitals: list[bytes] = []
    outcomes: list[bytes] = []
    admissions: list[bytes] = []
    sink = {"vitals": vitals, "outcomes": outcomes, "admissions": admissions}
    ward = WardSimulator(cfg)
    for chunk in ward.messages():
        for role, _key, value, _emit in chunk:
            sink[role].append(value)
    return vitals, outcomes, admissions, ward.stats.to_dict()


def _valid(model: type, raw: list[bytes]) -> pd.DataFrame:
    frame = BatchValidator(model).validate(raw).table.to_pandas()
    return frame.drop(columns="_index")


def quarantine_frame(cleaned: pd.DataFrame) -> pd.DataFrame:
    """Rejections of ``clean_events`` as the ETL's quarantine zone records them.

    One row per quarantined event (``scope`` = row, all its reasons) and one per rejected
    value of a usable event (``scope`` = value, its ``field``).
    """
    bad = cleaned["rejections"] != ""
    rows = cleaned.loc[bad & (cleaned["status"] != STATUS_OK), ["event_id", "patient_id", "ts"]]
    rows = rows.assign(scope="row", field=None,
                       reason=cleaned.loc[rows.index, "rejections"])  # fmt: skip
    vals = cleaned.loc[bad & (cleaned["status"] == STATUS_OK),
                       ["event_id", "patient_id", "ts", "rejections"]]  # fmt: skip
    vals = vals.assign(reason=vals["rejections"].str.split(",")).explode("reason")
    vals = vals.drop(columns="rejections").assign(
        scope="value", field=lambda d: d["reason"].str.split(":").str[1]
    )
    return pd.concat([rows, vals], ignore_index=True)


def build_cohort(
    sim: SimulatorSettings, feat: FeaturesSettings, *, keep_stages: bool = False
) -> Cohort:
    """Simulate ``sim``'s ward and compute its features and labels as the batch path does.

    Invalid messages (the simulator's malformed fault) are left out, as the landing's
    dead-letter store would take them; the labels treat outcomes as known up to the end
    of the simulated period.
    """
    vitals_raw, outcomes_raw, admissions_raw, stats = _messages(sim)
    events = _valid(VitalsEvent, vitals_raw)
    del vitals_raw  # the raw bytes are the largest thing held here: let them go early
    outcomes = _valid(OutcomeEvent, outcomes_raw)
    admissions = _valid(AdmissionEvent, admissions_raw)

    raw = events if keep_stages else None
    first = events.drop_duplicates("event_id")
    del events
    ordered = first.sort_values(["patient_id", "ts", "event_id"], kind="stable")
    del first
    cleaned, _ = clean_events(ordered)
    del ordered
    minutes = to_minutes(cleaned[cleaned["status"] == STATUS_OK])
    quarantine = quarantine_frame(cleaned) if keep_stages else None
    del cleaned
    facts = admissions.set_index("patient_id").to_dict("index") if len(admissions) else {}
    parts = [
        features_for_patient(
            group, static_vector(facts.get(pid)), cadence_minutes=feat.cadence_minutes
        )
        for pid, group in minutes.groupby("patient_id", sort=True)
    ]
    features = pd.concat(parts, ignore_index=True)
    end = pd.Timestamp(sim.start) + pd.Timedelta(hours=sim.hours)
    labels = make_labels(
        features,
        outcomes,
        horizon=pd.Timedelta(hours=feat.horizon_hours),
        observed_until=end,
    )
    return Cohort(
        features=features,
        labels=labels,
        admissions=admissions,
        outcomes=outcomes,
        sim_stats=stats,
        raw=raw,
        minutes=minutes if keep_stages else None,
        quarantine=quarantine,
    )


def ward_day_settings(
    sim: SimulatorSettings,
    *,
    scenario: str,
    seed: int,
    patients: int,
    day: int = 0,
    deterioration_rate: float | None = None,
    hours: float = 24.0,
) -> SimulatorSettings:
    """The simulator settings of :func:`ward_day`'s ward, e.g. to stream the same ward."""
    update: dict[str, object] = {
        "patients": patients,
        "hours": hours,
        "seed": seed,
        "scenario": scenario,
        "start": (pd.Timestamp(sim.start) + pd.Timedelta(days=day)).to_pydatetime(),
    }
    if deterioration_rate is not None:
        update["episodes"] = sim.episodes.model_copy(
            update={"deterioration_rate_per_day": deterioration_rate, "enrichment": 1.0}
        )
    return sim.model_copy(update=update)


def ward_day(
    sim: SimulatorSettings,
    feat: FeaturesSettings,
    *,
    scenario: str,
    seed: int,
    patients: int,
    day: int = 0,
    deterioration_rate: float | None = None,
    keep_stages: bool = False,
    hours: float = 24.0,
) -> Cohort:
    """One simulated day of a ward: ``patients`` admitted ``day`` days after ``sim.start``.

    The wards of drift tests, benchmarks and demos: a scenario per day, a seed per ward,
    and optionally a deterioration rate several times the default, so a day of a few
    hundred patients holds enough episodes to train and gate on. ``hours`` sets how long
    the ward is simulated (a day by default).
    """
    ward = ward_day_settings(
        sim, scenario=scenario, seed=seed, patients=patients, day=day,
        deterioration_rate=deterioration_rate, hours=hours,
    )  # fmt: skip
    return build_cohort(ward, feat, keep_stages=keep_stages)
