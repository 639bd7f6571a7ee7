"""What the EDA report reads: the lake's zones, or the same frames built in process."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.cleaning import VITALS
from features.labels import STATUS_LABELLED, make_labels
from features.spec import FEATURES_ZONE, LABELS_FILE
from pipelines.cohort import Cohort
from stack.catalog import (
    PROCESSED_VITALS,
    QUARANTINE,
    RAW_ADMISSIONS,
    RAW_OUTCOMES,
    RAW_VITALS,
)
from stack.lake import Lake

RAW_COLUMNS = ["event_id", "patient_id", "ts", *VITALS, "consciousness", "on_oxygen"]


class EdaDataError(RuntimeError):
    """The lake lacks what the report needs (run the ETL first)."""


@dataclass(frozen=True)
class EdaData:
    """Historical data for the report.

    ``minutes`` carries, per patient-minute, the processed vitals, ``group`` (1 when a
    deterioration follows within the horizon, 0 when the horizon passed without one, NA
    otherwise), ``hours_to_outcome`` and the admission facts (``age``, ``sex``,
    ``scale2``: charted on SpO2 scale 2, i.e. hypercapnic COPD).
    """

    raw: pd.DataFrame
    minutes: pd.DataFrame
    quarantine: pd.DataFrame
    admissions: pd.DataFrame
    outcomes: pd.DataFrame
    features: pd.DataFrame | None
    horizon_hours: float

    @property
    def patients(self) -> int:
        return int(self.minutes["patient_id"].nunique())


def _prepare(
    raw: pd.DataFrame,
    minutes: pd.DataFrame,
    quarantine: pd.DataFrame,
    admissions: pd.DataFrame,
    outcomes: pd.DataFrame,
    features: pd.DataFrame | None,
    horizon_hours: float,
) -> EdaData:
    if minutes.empty:
        raise EdaDataError("no processed vitals: run `make etl` (or `make demo`) first")
    m = minutes.rename(columns={"minute": "ts"}) if "minute" in minutes else minutes
    m = m.sort_values(["patient_id", "ts"]).reset_index(drop=True)
    observed_until = m["ts"].max() + pd.Timedelta(minutes=1)
    lab = make_labels(
        m[["patient_id", "ts"]],
        outcomes[["patient_id", "ts", "kind"]],
        horizon=pd.Timedelta(hours=horizon_hours),
        observed_until=observed_until,
    )
    m["group"] = lab["label"].where(lab["label_status"] == STATUS_LABELLED)
    m["hours_to_outcome"] = lab["minutes_to_outcome"] / 60.0
    adm = admissions.sort_values("ts").drop_duplicates("patient_id", keep="last")
    facts = adm.set_index("patient_id")[["age", "sex", "spo2_scale"]]
    m = m.join(facts, on="patient_id")
    m["scale2"] = (m["spo2_scale"] == 2).astype("Int8").where(m["spo2_scale"].notna())
    return EdaData(
        raw=raw[[c for c in RAW_COLUMNS if c in raw]],
        minutes=m,
        quarantine=quarantine,
        admissions=adm,
        outcomes=outcomes.sort_values("ts").drop_duplicates("patient_id"),
        features=features,
        horizon_hours=horizon_hours,
    )


def from_lake(lake: Lake, horizon_hours: float, *, feature_sample: int = 200_000) -> EdaData:
    """The report's inputs from the lake (raw, processed, quarantine, features, facts)."""

    def read(zone: str) -> pd.DataFrame:
        return (
            lake.read_table(zone).to_pandas()
            if lake.files(zone) or lake.exists(zone)
            else (pd.DataFrame())
        )

    minutes = read(PROCESSED_VITALS)
    if minutes.empty:
        raise EdaDataError(f"no processed vitals in {lake.uri}/{PROCESSED_VITALS}: run `make etl`")
    features = read(FEATURES_ZONE)
    if len(features) > feature_sample:
        features = features.iloc[:: int(np.ceil(len(features) / feature_sample))]
    if len(features) and lake.exists(LABELS_FILE):
        labels = lake.read_table(LABELS_FILE).to_pandas()
        features = features.merge(labels[["patient_id", "ts", "label"]], on=["patient_id", "ts"],
                                  how="left")  # fmt: skip
    outcomes = read(RAW_OUTCOMES)
    if outcomes.empty:
        outcomes = pd.DataFrame({"patient_id": [], "ts": pd.Series([], dtype="datetime64[ns, UTC]"),
                                 "kind": []})  # fmt: skip
    admissions = read(RAW_ADMISSIONS)
    if admissions.empty:
        admissions = pd.DataFrame(columns=["patient_id", "ts", "age", "sex", "spo2_scale"])
    return _prepare(
        raw=read(RAW_VITALS).drop_duplicates("event_id"),
        minutes=minutes.drop(columns=[c for c in ("partition",) if c in minutes]),
        quarantine=read(QUARANTINE),
        admissions=admissions,
        outcomes=outcomes,
        features=features if len(features) else None,
        horizon_hours=horizon_hours,
    )


def from_cohort(cohort: Cohort, horizon_hours: float) -> EdaData:
    """The same inputs from an in-process cohort built with ``keep_stages=True``."""
    if cohort.raw is None or cohort.minutes is None or cohort.quarantine is None:
        raise EdaDataError("the cohort was built without keep_stages=True")
    features = cohort.features.merge(
        cohort.labels[["patient_id", "ts", "label"]], on=["patient_id", "ts"], how="left"
    )
    return _prepare(
        raw=cohort.raw.drop_duplicates("event_id"),
        minutes=cohort.minutes,
        quarantine=cohort.quarantine,
        admissions=cohort.admissions,
        outcomes=cohort.outcomes,
        features=features,
        horizon_hours=horizon_hours,
    )
