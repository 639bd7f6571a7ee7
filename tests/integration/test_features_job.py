"""Batch features on real Spark and PostgreSQL, checked against the online path.

Raw events go simulator → Kafka → lake → ETL (Spark) → features (Spark). The same raw
events, in the order they landed, go through :class:`features.online.OnlineFeatures`;
at every batch feature time both must agree to 1e-9.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest

from features.spec import FEATURE_SET_VERSION, FEATURES_TABLE, FEATURES_ZONE, LABELS_ZONE
from pipelines.etl.job import run_etl
from pipelines.features.job import STAGING_ZONE, run_features
from stack.catalog import RAW_ADMISSIONS, RAW_VITALS
from stack.settings import Settings
from tests.integration.test_etl import lake, land, q
from tests.unit.test_online_parity import stream_and_compare

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _landed_events(s: Settings) -> pd.DataFrame:
    raw = lake(s).read_table(RAW_VITALS).to_pandas()
    # Landing order within each Kafka partition is the arrival order the scorer sees.
    return raw.sort_values(["kafka_ts", "kafka_partition", "kafka_offset"]).reset_index(drop=True)


def test_spark_features_equal_the_online_path_and_labels_land(etl_settings: Settings) -> None:
    s, sim = land(etl_settings, patients=24, hours=6, seed=21)
    s = s.model_copy(update={"features": s.features.model_copy(update={"cascade_hours": 5})})
    assert run_etl(s).status == "succeeded"
    summary = run_features(s)
    assert summary.status == "succeeded"
    feats = lake(s).read_table(FEATURES_ZONE).to_pandas()
    assert len(feats) == summary.feature_rows > 1000
    assert feats["patient_id"].nunique() == summary.patients
    # One row per patient per 5 minutes, on the clock.
    assert (feats["ts"].dt.minute % 5 == 0).all()
    assert not feats.duplicated(["patient_id", "ts"]).any()
    # The tasks' files were published; nothing is left in staging.
    assert lake(s).files(f"{FEATURES_ZONE}/", suffix=".parquet")
    assert lake(s).files(STAGING_ZONE, suffix="") == []

    # PostgreSQL has the same rows; partitions are tracked with the feature-set version.
    assert q(s, f"SELECT count(*) FROM {FEATURES_TABLE}")[0][0] == len(feats)
    tracked = q(s, "SELECT DISTINCT feature_set_version FROM feature_partitions")
    assert tracked == [(FEATURE_SET_VERSION,)]

    # Parity with the online path fed the landed stream in arrival order.
    events = _landed_events(s)
    admissions = lake(s).read_table(RAW_ADMISSIONS).to_pandas()
    ref = feats.sort_values(["patient_id", "ts"]).reset_index(drop=True)
    compared, total, bad = stream_and_compare(
        events, admissions, 200, ref=ref, lateness_minutes=s.features.lateness_minutes
    )
    assert not bad, bad
    assert compared == total == len(feats)

    # Labels: one per feature row; positives only for patients with an outcome.
    labels = lake(s).read_table(LABELS_ZONE).to_pandas()
    assert len(labels) == len(feats)
    assert summary.labels["positive"] == int((labels["label"] == 1).sum())
    pos_patients = set(labels.loc[labels["label"] == 1, "patient_id"])
    assert pos_patients <= set(labels.loc[labels["outcome_ts"].notna(), "patient_id"])
    if sim.stats.outcomes:
        assert summary.labels["positive"] > 0
    assert q(s, "SELECT count(*) FROM feature_labels")[0][0] == len(labels)

    # Rerun: nothing new, nothing done.
    again = run_features(s)
    assert again.status == "nothing_to_do"
    runs: Any = q(s, "SELECT status, feature_set_version FROM feature_runs ORDER BY started_at")
    assert runs == [("succeeded", FEATURE_SET_VERSION)]


def test_a_reprocessed_hour_recomputes_it_and_its_cascade_only(etl_settings: Settings) -> None:
    s, _ = land(etl_settings, patients=10, hours=8, seed=4)
    s = s.model_copy(update={"features": s.features.model_copy(update={"cascade_hours": 2})})
    run_etl(s)
    first = run_features(s)
    hours = sorted(first.pending)
    assert len(hours) >= 8
    before = q(
        s, f"SELECT md5(string_agg(t::text, '' ORDER BY patient_id, ts)) FROM {FEATURES_TABLE} t"
    )
    # The ETL reprocesses one early hour (as when late events land in it).
    stamps = dict(q(s, "SELECT partition, processed_at FROM etl_partitions"))
    run_etl(s, only=[hours[1]], force=True)
    redone = {p for p, at in q(s, "SELECT partition, processed_at FROM etl_partitions")
              if stamps[p] != at}  # fmt: skip
    assert hours[1] in redone
    second = run_features(s)
    assert second.status == "succeeded"
    # Exactly the hours the ETL redid and the two after each (their windows look back).
    expected = {h for h in hours if any(0 <= hours.index(h) - hours.index(r) <= 2 for r in redone)}
    assert set(second.pending) == expected
    assert len(expected) < len(hours)
    after = q(
        s, f"SELECT md5(string_agg(t::text, '' ORDER BY patient_id, ts)) FROM {FEATURES_TABLE} t"
    )
    assert after == before  # same data in → same features out, replaced not duplicated
    n = q(s, f"SELECT count(*), count(DISTINCT (patient_id, ts)) FROM {FEATURES_TABLE}")[0]
    assert n[0] == n[1] == lake(s).read_table(FEATURES_ZONE).num_rows
