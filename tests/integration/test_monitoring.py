"""The closed loop on a real broker, Spark, MLflow server, PostgreSQL and Airflow.

Every stage runs as a DAG (`airflow dags test`): a baseline ward streams through Kafka →
ingestion → ETL → features → training → deployment (champion); the ward switches to a
respiratory-virus wave → monitoring names the drifted columns and triggers → retraining
on the sliding window → a later period of the wave streams through the BentoML service
and the scorer (old champion serving, new challenger in shadow) → gate → new champion,
whose realized performance on the new regime — stored live predictions judged against the
outcomes that landed — beats the old one's.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from features.spec import FEATURES_TABLE
from ops.live import ROLES, score_live
from pipelines.cohort import Cohort, ward_day, ward_day_settings
from pipelines.produce import simulate_to_kafka
from stack.db import drop_database, recreate_database
from stack.lake import Lake
from stack.localstack import endpoints
from stack.settings import Settings, load_settings
from tests.conftest import TINY_TRAINING, make_settings

pytestmark = pytest.mark.integration


# Wards this small (160 patients a day) train and gate only if every deterioration
# progresses to its outcome: none settles by itself and the ward rescues none.
PROGRESSING = {"recover_share": 0.0}
NO_RESCUE = {"trigger": "none"}

# Day 0 as ward() would simulate it (same size, seed and deterioration rate), but streamed.
BASELINE_DAY = {
    "patients": 160,
    "hours": 24,
    "seed": 11,
    "scenario": "baseline",
    "episodes": {"deterioration_rate_per_day": 0.5, "enrichment": 1.0, **PROGRESSING},
    "rescue": NO_RESCUE,
}


def _simulator() -> Any:
    sim = load_settings(environ={}).simulator
    return sim.model_copy(
        update={
            "episodes": sim.episodes.model_copy(update=PROGRESSING),
            "rescue": sim.rescue.model_copy(update=NO_RESCUE),
        }
    )


def ward(scenario: str, seed: int, day: int, patients: int = 160, hours: float = 24) -> Cohort:
    base = load_settings(environ={})
    return ward_day(_simulator(), base.features, scenario=scenario, seed=seed, day=day,
                    patients=patients, deterioration_rate=0.5, hours=hours)  # fmt: skip


# A later period of the wave, streamed live through the service and the scorer (and built
# in process for its features and outcomes: the same ward, by seed).
LIVE = {"scenario": "respiratory_wave", "seed": 14, "day": 3, "patients": 80, "hours": 12}


@pytest.fixture
def loop_settings(
    mlflow_overlay: dict[str, Any], stack_overlay: dict[str, Any], tmp_path: Path
) -> Iterator[Settings]:
    """MLflow of the session, PostgreSQL of the session with a database of this test's own."""
    tag = uuid.uuid4().hex[:8]
    local = {
        **mlflow_overlay["local_stack"],
        "postgres_port": stack_overlay["local_stack"]["postgres_port"],
        "kafka_port": stack_overlay["local_stack"]["kafka_port"],
    }
    probe = make_settings(tmp_path, run_dir=stack_overlay["run_dir"], local_stack=local)
    base = endpoints(probe).database_url
    name = f"m_{tag}"
    url = recreate_database(base, name)
    s = make_settings(
        tmp_path,
        run_dir=str(tmp_path / "run"),
        local_stack=local,
        mlflow=mlflow_overlay["mlflow"],
        postgres={"url": url},
        kafka={"partitions": 3, "topics": {role: f"{role}.{tag}" for role in ROLES}},
        landing={"group_id": f"landing-{tag}", "idle_timeout_s": 10},
        spark={"master": "local[2]", "shuffle_partitions": 4},
        etl={"reports_dir": str(tmp_path / "reports" / "etl")},
        simulator=BASELINE_DAY,
        training={
            **TINY_TRAINING,
            "experiment": f"loop-{tag}",
            "registered_model": f"vigil-loop-{tag}",
            "reports_dir": str(tmp_path / "reports" / "training"),
        },
        monitoring={
            "experiment": f"monitoring-{tag}",
            "reports_dir": str(tmp_path / "reports" / "monitoring"),
            "retrain": {"window_days": 1.0, "cooldown_hours": 6},
            "drift": {"max_rows": 12_000},  # Evidently's time grows with rows; verdicts do not
        },
        logging={"format": "text"},
    )
    yield s
    drop_database(url, name)


@pytest.mark.timeout(1200)  # ~8.5 min alone, ~10 beside `make test`'s other worker
def test_the_loop_through_airflow_then_retrain_if_needed(
    loop_settings: Settings, airflow_home: Path, tmp_path: Path
) -> None:
    """Each DAG run by ``airflow dags test`` against the real embedded stack:

    a baseline ward through Kafka → ingestion → ETL → features → training → deployment
    (v1); a quiet day → monitoring, no trigger; a virus
    wave → monitoring names the columns and emits the retrain Asset → training on the
    sliding window (v2, challenger) → a later period of the wave scored live by the
    service and the scorer, v1 serving and v2 in shadow → deployment (v2); v2's realized
    performance there beats v1's; then ``make retrain-if-needed``'s job judges v2 on its
    live predictions and finds nothing to do.
    """
    from demo.airflow import skip_reasons
    from monitoring.job import champion, landed_outcomes, stored_predictions
    from monitoring.performance import realized
    from ops.retrain import retrain_if_needed
    from tests.conftest import asset_events, run_dag

    s = loop_settings
    lake = Lake(s.lake.root)

    def dag(dag_id: str) -> str:
        run = run_dag(airflow_home, s, dag_id, tmp_path)
        log = run.stdout + run.stderr
        assert run.returncode == 0, log[-3000:]
        assert "Task failed" not in log, log[-3000:]
        return log

    def query(sql: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(endpoints(s).database_url) as conn:
            return conn.execute(sql).fetchall()

    # Day 0 streams through the broker and every batch stage's DAG.
    sent, _ = simulate_to_kafka(s)
    dag("vigil_ingest")
    assert asset_events(airflow_home, "vigil://lake/raw/vitals") == 1
    dag("vigil_etl")
    (raw_rows, source, quarantined, dups), = query(
        "SELECT sum(raw_rows), sum(source_rows), sum(quarantined_rows), sum(duplicates) "
        "FROM etl_partitions"
    )  # fmt: skip
    # every vitals row that landed (malformed messages went to dead letters) is accounted for
    assert raw_rows == sent.stats.vitals_messages - sum(sent.stats.malformed.values())
    assert raw_rows == source + quarantined + dups
    dag("vigil_features")
    assert asset_events(airflow_home, "vigil://lake/features") == 1
    (feature_rows,), = query(f"SELECT count(*) FROM {FEATURES_TABLE}")  # fmt: skip
    assert 160 * 24 * 12 * 0.6 < feature_rows < 160 * 24 * 12 * 1.05
    dag("vigil_training")
    dag("vigil_deployment")
    old = champion(s)
    assert old.version == "1"
    assert asset_events(airflow_home, "vigil://registry/challenger") == 1
    assert asset_events(airflow_home, "vigil://registry/champion") == 1

    # A quiet day on the same regime: judged, no trigger, no retrain Asset event.
    ward("baseline", seed=12, day=1).to_lake(lake, part="baseline-2")
    quiet = dag("vigil_monitoring")
    assert skip_reasons(quiet) == ["no drift or performance trigger"]  # as make demo-airflow shows
    assert query("SELECT triggered, drift_share FROM monitoring_runs")[0][0] is False
    assert asset_events(airflow_home, "vigil://monitoring/retraining-trigger") == 0

    # The wave (a busier ward: the gate needs enough held-out patients to beat NEWS2).
    ward("respiratory_wave", seed=13, day=2, patients=300).to_lake(lake, part="wave")
    dag("vigil_monitoring")
    assert asset_events(airflow_home, "vigil://monitoring/retraining-trigger") == 1
    (drifted, reasons), = query(
        "SELECT drifted_columns, reasons FROM monitoring_runs WHERE triggered"
    )  # fmt: skip
    assert {"temperature_last", "resp_rate_last"} <= set(drifted), drifted
    assert not [c for c in drifted if c.startswith("heart_rate_")], drifted
    assert reasons[0].startswith("feature drift")
    assert [r[0] for r in query("SELECT status FROM retraining_triggers")] == ["pending"]

    dag("vigil_training")
    # v2 waits as @challenger. A later period of the wave streams through the BentoML
    # service and the scorer: v1 scores it as champion, v2 in shadow, event by event.
    live = ward_day_settings(_simulator(), deterioration_rate=0.5, **LIVE)
    sent_live, scoring = score_live(s, live)
    assert scoring.scored > 0.9 * sent_live.stats.valid_events, scoring.to_dict()
    assert scoring.shadow_stored == scoring.scored
    later = ward(**LIVE)  # the same ward in process: its batch features and outcomes
    later.to_lake(lake, part="wave-2")

    dag("vigil_deployment")
    (status, new_version, run_id), = query(
        "SELECT status, new_version, training_run_id FROM retraining_triggers"
    )  # fmt: skip
    assert (status, new_version) == ("promoted", "2")
    assert run_id
    new = champion(s)
    assert new.version == "2"
    assert asset_events(airflow_home, "vigil://registry/champion") == 2

    # Realized performance on the new regime, from the stored live predictions once the
    # outcomes landed: the new champion (then in shadow) beats the old one (then serving).
    start = pd.Timestamp(live.start)
    end = start + pd.Timedelta(hours=LIVE["hours"])
    perf = {}
    for who in (old, new):
        preds, alerts, role = stored_predictions(s, who, start, end)
        perf[who.version] = realized(
            preds, alerts, landed_outcomes(lake), horizon=pd.Timedelta(hours=4),
            observed_until=end, cfg=s.monitoring.performance, served_as=role,
        )  # fmt: skip
    assert (perf["1"].served_as, perf["2"].served_as) == ("champion", "shadow")
    assert perf["1"].judged, perf
    assert perf["2"].judged, perf
    assert perf["1"].alerts  # only the champion alerted
    assert perf["2"].alerts is None
    assert perf["2"].pr_auc > perf["1"].pr_auc, perf
    assert perf["2"].roc_auc > perf["1"].roc_auc, perf
    print("realized on the later wave:", {v: (p.roc_auc, p.pr_auc, p.labelled, p.positive)
                                          for v, p in perf.items()})  # fmt: skip

    # make retrain-if-needed: v2 is judged on the regime it was trained on; nothing to do.
    out = retrain_if_needed(s)
    assert out.action == "none", out.monitoring.reasons
    assert out.monitoring.model_version == "2"
    assert out.monitoring.realized.served_as == "shadow"  # its live predictions, judged
    assert out.monitoring.realized.judged
    report = out.monitoring.report_dir
    assert (report / "drift.html").stat().st_size > 10_000
    assert (report / "summary.json").exists()
    prom = (s.run_path / "metrics" / "monitoring.prom").read_text()
    names = {m.name for m in text_string_to_metric_families(prom)}
    assert {"vigil_drift_share", "vigil_stage_last_success_timestamp_seconds"} <= names
    assert query("SELECT count(*), sum(triggered::int) FROM monitoring_runs") == [(3, 1)]
