"""DagBag integrity: every DAG imports, has its tasks, Assets and policy, and no DAG file
does work at import time."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from stack.settings import REPO_ROOT, Settings

DAGS = REPO_ROOT / "dags"
EXPECTED = {
    "vigil_ingest": (["land"], "vigil://lake/raw/vitals"),
    "vigil_etl": (["etl"], "vigil://lake/processed/vitals_minute"),
    "vigil_features": (["features"], "vigil://lake/features"),
    "vigil_training": (["train"], "vigil://registry/challenger"),
    "vigil_deployment": (["gate_and_promote"], "vigil://registry/champion"),
    "vigil_monitoring": (["drift", "trigger"], "vigil://monitoring/retraining-trigger"),
    "vigil_eda": (["report"], None),
}
# Which Asset schedules which DAG: data flows raw → processed → features; the drift
# trigger schedules training; a new challenger schedules deployment.
SCHEDULED_ON = {
    "vigil_etl": "vigil://lake/raw/vitals",
    "vigil_features": "vigil://lake/processed/vitals_minute",
    "vigil_training": "vigil://monitoring/retraining-trigger",
    "vigil_deployment": "vigil://registry/challenger",
}


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory: pytest.TempPathFactory) -> Any:
    home = tmp_path_factory.mktemp("airflow")
    os.environ.setdefault("AIRFLOW_HOME", str(home))
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    # A config path that does not exist: a DAG file loading settings at import would fail.
    os.environ["VIGIL_CONFIG"] = str(home / "no-such-config.yaml")
    try:
        from airflow.dag_processing.dagbag import DagBag

        return DagBag(dag_folder=str(DAGS))
    finally:
        os.environ.pop("VIGIL_CONFIG", None)


def test_no_import_errors_and_every_dag_is_there(dagbag: Any) -> None:
    assert dagbag.import_errors == {}
    assert set(dagbag.dags) == set(EXPECTED)


@pytest.mark.parametrize("dag_id", sorted(EXPECTED))
def test_tasks_outlets_and_policy(dagbag: Any, dag_id: str) -> None:
    dag = dagbag.dags[dag_id]
    tasks, outlet = EXPECTED[dag_id]
    assert sorted(t.task_id for t in dag.tasks) == sorted(tasks)
    outlets = {o.uri for t in dag.tasks for o in t.outlets}
    assert outlets == ({outlet} if outlet else set())
    assert dag.catchup is False
    assert dag.max_active_runs == 1
    assert dag.default_args["retries"] >= 1
    assert dag.default_args["retry_delay"].total_seconds() > 0
    assert dag.owner == "vigil"
    assert "vigil" in dag.tags
    assert dag.doc_md
    assert dag.doc_md.strip() == (Path(dag.fileloc).read_text().split('"""')[1]).strip()


@pytest.mark.parametrize("dag_id", sorted(SCHEDULED_ON))
def test_assets_chain_the_stages(dagbag: Any, dag_id: str) -> None:
    condition = dagbag.dags[dag_id].timetable.asset_condition
    assert [a.uri for a in condition.objects] == [SCHEDULED_ON[dag_id]]


def test_training_also_runs_daily(dagbag: Any) -> None:
    from airflow.sdk import AssetOrTimeSchedule

    assert isinstance(dagbag.dags["vigil_training"].timetable, AssetOrTimeSchedule)


def test_dag_files_do_no_work_at_import() -> None:
    for path in DAGS.glob("*.py"):
        text = path.read_text()
        body = text.split("def ", 1)[0]  # module level, before the DAG function
        for call in ("load_settings(", "run_", "Lander(", "connect("):
            assert call not in body, (path.name, call)


def test_demo_reads_skip_reasons_from_task_logs() -> None:
    from demo.airflow import skip_reasons

    log = (
        "2026-11-28T16:31:26.413476Z [info     ] ::group::Post Execute          [task] "
        "loc=task_runner.py:1620\n"
        "2026-11-28T16:31:26.413900Z [info     ] Skipping task.                 [task] "
        "loc=task_runner.py:1622 reason=gate kept the champion: challenger - champion "
        "ROC-AUC lower bound -0.031 < -0.02\n"
        "2026-11-28T16:31:26.483586Z [info     ] Marking run <DagRun vigil_deployment> skipped\n"
    )
    assert skip_reasons(log) == [
        "gate kept the champion: challenger - champion ROC-AUC lower bound -0.031 < -0.02"
    ]
    assert skip_reasons("Task failed\n") == []


def test_make_airflow_tells_every_component_its_port_and_starts_paused(tmp_path: Path) -> None:
    from ops.airflowcli import standalone_env

    env = standalone_env(tmp_path, tmp_path / "vigil.yaml", 8090, unpaused=False)
    assert env["AIRFLOW__API__PORT"] == "8090"
    # Task runners reach the execution API through these; without them, localhost:8080.
    assert env["AIRFLOW__API__BASE_URL"] == "http://127.0.0.1:8090"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:8090/execution/"
    assert "8080" not in " ".join(v for k, v in env.items() if k.startswith("AIRFLOW__"))
    assert env["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] == "True"
    assert env["VIGIL_CONFIG"] == str(tmp_path / "vigil.yaml")
    on = standalone_env(tmp_path, tmp_path / "vigil.yaml", 8080, unpaused=True)
    assert on["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] == "False"


def test_an_airflow_home_on_postgresql_gives_every_process_both_urls(tmp_path: Path) -> None:
    """Airflow 3 on PostgreSQL needs the asyncio URL too (without it `airflow db migrate`
    fails for want of asyncpg): both are derived from the one the home was migrated on."""
    from ops.airflowcli import METADATA_URL_FILE, airflow_env, home_metadata_url

    assert home_metadata_url(tmp_path) == f"sqlite:///{tmp_path / 'airflow.db'}"
    assert not any("SQL_ALCHEMY" in k for k in airflow_env(tmp_path))
    url = "postgresql+psycopg://vigil:s%40cret@127.0.0.1:15432/airflow"
    (tmp_path / METADATA_URL_FILE).write_text(url + "\n")
    env = airflow_env(tmp_path)
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == url
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC"] == (
        "postgresql+psycopg_async://vigil:s%40cret@127.0.0.1:15432/airflow"
    )


def test_the_metadata_db_setting_picks_the_database(settings: Settings) -> None:
    from ops.airflowcli import metadata_db_url

    pg = settings.model_copy(update={"postgres": settings.postgres.model_copy(
        update={"url": "postgresql://u:p@db.hospital:5432/vigil"})})  # fmt: skip
    assert metadata_db_url(pg) == "postgresql+psycopg://u:p@db.hospital:5432/airflow"
    lite = pg.model_copy(update={"airflow": pg.airflow.model_copy(
        update={"metadata_db": "sqlite"})})  # fmt: skip
    assert metadata_db_url(lite) is None
