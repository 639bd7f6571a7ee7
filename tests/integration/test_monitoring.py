"""The closed loop on a real MLflow server and real PostgreSQL.

Baseline ward → champion; the ward switches to a respiratory-virus wave → monitoring
names the drifted columns and triggers → retraining on the sliding window → gate →
new champion, which beats the old one on a later period of the new regime.
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

from pipelines.cohort import Cohort, build_cohort
from stack.lake import Lake
from stack.localstack import endpoints
from stack.settings import Settings, load_settings
from tests.conftest import TINY_TRAINING, make_settings

pytestmark = pytest.mark.integration

START = pd.Timestamp("2026-01-05T00:00:00Z")


def ward(scenario: str, seed: int, day: int, patients: int = 160) -> Cohort:
    base = load_settings(environ={})
    sim = base.simulator.model_copy(
        update={
            "patients": patients,
            "hours": 24,
            "seed": seed,
            "scenario": scenario,
            "start": (START + pd.Timedelta(days=day)).to_pydatetime(),
            "episodes": base.simulator.episodes.model_copy(
                update={"deterioration_rate_per_day": 0.5}
            ),
        }
    )
    return build_cohort(sim, base.features)


@pytest.fixture
def loop_settings(
    mlflow_overlay: dict[str, Any], stack_overlay: dict[str, Any], tmp_path: Path
) -> Iterator[Settings]:
    """MLflow of the session, PostgreSQL of the session with a database of this test's own."""
    tag = uuid.uuid4().hex[:8]
    local = {
        **mlflow_overlay["local_stack"],
        "postgres_port": stack_overlay["local_stack"]["postgres_port"],
    }
    probe = make_settings(tmp_path, run_dir=stack_overlay["run_dir"], local_stack=local)
    base = endpoints(probe).database_url
    admin = base.rsplit("/", 1)[0] + "/postgres"
    name = f"m_{tag}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    s = make_settings(
        tmp_path,
        run_dir=str(tmp_path / "run"),
        local_stack=local,
        mlflow=mlflow_overlay["mlflow"],
        postgres={"url": base.rsplit("/", 1)[0] + f"/{name}"},
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
        },
        logging={"format": "text"},
    )
    yield s
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_drift_triggers_retraining_and_the_new_champion_is_better(
    loop_settings: Settings,
) -> None:
    from monitoring.job import Champion, backtest_risk, champion, run_monitoring, score_performance
    from ops.retrain import retrain_if_needed
    from training.job import run_training
    from training.promotion import run_promote

    s = loop_settings
    lake = Lake(s.lake.root)
    ward("baseline", seed=11, day=0).to_lake(lake, part="baseline")
    run_training(s)
    assert run_promote(s).promoted
    old = champion(s)

    # A quiet day on the same regime: no trigger.
    ward("baseline", seed=12, day=1).to_lake(lake, part="baseline-2")
    quiet = run_monitoring(s)
    assert not quiet.triggered, quiet.reasons
    assert quiet.drift.share < s.monitoring.drift.trigger_share

    # The wave arrives (a busier ward: the gate needs enough held-out patients to beat
    # NEWS2 with confidence).
    ward("respiratory_wave", seed=13, day=2, patients=300).to_lake(lake, part="wave")
    out = retrain_if_needed(s)
    drifted = {c.column for c in out.monitoring.drift.drifted}
    assert out.monitoring.triggered
    assert {"temperature_last", "resp_rate_last"} <= drifted, sorted(drifted)
    assert not any(c.startswith("heart_rate_") for c in drifted), sorted(drifted)
    assert out.action == "promoted", out.detail
    new = champion(s)
    assert new.version != old.version
    assert out.since == out.monitoring.window_end - pd.Timedelta(days=1)

    # A later day of the wave, never trained on: the new champion does better.
    later = ward("respiratory_wave", seed=14, day=3)
    later.to_lake(lake, part="wave-2")
    rows = later.features.merge(later.labels, on=["patient_id", "ts"])
    rows = rows[rows["label_status"] == "labelled"]
    perf = {}
    for who in (old, new):
        scored = rows[["patient_id", "ts"]].assign(risk=backtest_risk(s, who, rows))
        perf[who.version] = score_performance(
            scored, later.outcomes, horizon=pd.Timedelta(hours=4),
            observed_until=rows["ts"].max() + pd.Timedelta(hours=5),
            cfg=s.monitoring.performance, source="backtest",
        )  # fmt: skip
    assert perf[new.version].pr_auc > perf[old.version].pr_auc, perf
    assert isinstance(old, Champion)

    # Everything was recorded: runs, the trigger's fate, reports and metrics.
    with psycopg.connect(endpoints(s).database_url) as conn:
        runs = conn.execute("SELECT count(*), sum(triggered::int) FROM monitoring_runs").fetchone()
        trig = conn.execute(
            "SELECT status, new_version, reasons FROM retraining_triggers"
        ).fetchall()
    assert runs == (2, 1)
    assert [(t[0], t[1]) for t in trig] == [("promoted", new.version)]
    assert any("feature drift" in r for r in trig[0][2])
    report = out.monitoring.report_dir
    assert (report / "drift.html").stat().st_size > 10_000
    assert (report / "summary.json").exists()
    prom = (s.run_path / "metrics" / "monitoring.prom").read_text()
    names = {m.name for m in text_string_to_metric_families(prom)}
    assert {"vigil_drift_share", "vigil_stage_last_success_timestamp_seconds"} <= names


def test_the_loop_runs_through_airflow(
    loop_settings: Settings, airflow_home: Path, tmp_path: Path
) -> None:
    """Training → deployment → (wave) monitoring emits the retrain Asset → training →
    deployment, each DAG run by ``airflow dags test`` against the same stack."""
    from monitoring.job import champion
    from tests.conftest import asset_events, run_dag

    s = loop_settings
    lake = Lake(s.lake.root)

    def dag(dag_id: str) -> str:
        run = run_dag(airflow_home, s, dag_id, tmp_path)
        log = run.stdout + run.stderr
        assert run.returncode == 0, log[-3000:]
        assert "Task failed" not in log, log[-3000:]
        return log

    ward("baseline", seed=21, day=0).to_lake(lake, part="baseline")
    dag("vigil_training")
    dag("vigil_deployment")
    assert champion(s).version == "1"
    assert asset_events(airflow_home, "vigil://registry/challenger") == 1
    assert asset_events(airflow_home, "vigil://registry/champion") == 1

    ward("respiratory_wave", seed=23, day=1).to_lake(lake, part="wave")
    dag("vigil_monitoring")
    assert asset_events(airflow_home, "vigil://monitoring/retraining-trigger") == 1
    with psycopg.connect(endpoints(s).database_url) as conn:
        pending = conn.execute("SELECT trigger_id, status FROM retraining_triggers").fetchall()
    assert [p[1] for p in pending] == ["pending"]

    dag("vigil_training")
    dag("vigil_deployment")
    with psycopg.connect(endpoints(s).database_url) as conn:
        (status, new, run_id), = conn.execute(
            "SELECT status, new_version, training_run_id FROM retraining_triggers"
        ).fetchall()  # fmt: skip
    assert new == "2"
    assert run_id
    assert status in ("promoted", "rejected")
    assert champion(s).version == ("2" if status == "promoted" else "1")
