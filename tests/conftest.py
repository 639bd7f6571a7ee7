"""Shared fixtures.

Unit tests get settings only. Integration tests get a real embedded stack (Tansu broker and
PostgreSQL 18; MLflow on request) started once per session on free loopback ports, in a
temporary run directory, and stopped at the end, so no process outlives the session.
Each test that touches Kafka gets its own topics, consumer group and lake folder.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from stack.localstack import down, free_port, up
from stack.settings import Settings, load_settings

# A pytest-xdist worker's __main__ (execnet's) has neither __spec__ nor __file__, which
# PySpark takes for a doctest run and exits at import (pyspark/sql/connect/utils.py).
_main = sys.modules["__main__"]
if getattr(_main, "__spec__", None) is None and not hasattr(_main, "__file__"):
    _main.__file__ = "<pytest-xdist worker>"

SMALL_WARD: dict[str, Any] = {"patients": 40, "hours": 3, "chunk_minutes": 30}


# The two longest test files, first: `make test` runs two pytest-xdist workers, a whole
# file at a time in this order (--dist loadfile --no-loadscope-reorder), so the ~9-minute
# loop test starts at once on one worker while the other works through the rest.
LONGEST_FIRST = ("tests/integration/test_monitoring.py", "tests/e2e/test_demo.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = item.nodeid.split("::", 1)[0]
        return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: within a file, and for the rest, collection order


def make_settings(tmp: Path, **sections: Any) -> Settings:
    """Settings from base.yaml + an overlay written under ``tmp`` (env ignored)."""
    overlay = {"run_dir": str(tmp / "run"), "lake": {"root": str(tmp / "lake")}}
    for key, value in sections.items():
        overlay[key] = value
    path = tmp / "overlay.yaml"
    path.write_text(yaml.safe_dump(overlay))
    return load_settings(path, environ={})


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


def isolated_stack_overlay(run: Path, services: list[str]) -> dict[str, Any]:
    return {
        "run_dir": str(run),
        "local_stack": {
            "kafka_port": free_port(),
            "postgres_port": free_port(),
            "mlflow_port": free_port(),
            "services": services,
            "start_timeout_s": 120,
        },
        "mlflow": {"local_store": str(run / "mlruns")},
    }


@pytest.fixture(scope="session")
def stack_overlay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A running Kafka API broker and PostgreSQL for the whole session."""
    run = tmp_path_factory.mktemp("stack")
    overlay = isolated_stack_overlay(run, ["kafka", "postgres"])
    path = run / "overlay.yaml"
    path.write_text(yaml.safe_dump(overlay))
    s = load_settings(path, environ={})
    try:
        up(s, create_topics=False)
        yield overlay
    finally:
        down(s)


@pytest.fixture
def stack_settings(stack_overlay: dict[str, Any], tmp_path: Path) -> Settings:
    """Settings on the session stack with this test's own topics, group and lake."""
    tag = uuid.uuid4().hex[:8]
    return make_settings(
        tmp_path,
        run_dir=stack_overlay["run_dir"],
        local_stack=stack_overlay["local_stack"],
        mlflow=stack_overlay["mlflow"],
        kafka={
            "partitions": 3,
            "topics": {
                "vitals": f"vitals.raw.{tag}",
                "outcomes": f"outcomes.{tag}",
                "admissions": f"admissions.{tag}",
                "dead_letters": f"vitals.deadletter.{tag}",
                "predictions": f"predictions.{tag}",
                "alerts": f"alerts.{tag}",
            },
        },
        landing={"group_id": f"landing-{tag}", "flush_records": 5000, "idle_timeout_s": 10},
        simulator=SMALL_WARD,
        logging={"format": "text"},
    )


@pytest.fixture
def etl_settings(stack_settings: Settings) -> Iterator[Settings]:
    """Stack settings with a database of this test's own (tables are per test)."""
    from stack.db import drop_database, recreate_database
    from stack.localstack import endpoints

    name = f"t_{uuid.uuid4().hex[:10]}"
    url = recreate_database(endpoints(stack_settings).database_url, name)
    s = stack_settings.model_copy(
        update={
            "postgres": stack_settings.postgres.model_copy(update={"url": url}),
            "spark": stack_settings.spark.model_copy(
                update={"master": "local[2]", "shuffle_partitions": 4}
            ),
            "etl": stack_settings.etl.model_copy(
                update={"reports_dir": stack_settings.run_path.parent / f"reports-{name}"}
            ),
        }
    )
    yield s
    drop_database(url, name)


# --------------------------------------------------------------------------- training
@pytest.fixture(scope="session")
def cohort() -> Any:
    """A small labelled cohort (features + labels) from the seeded simulator, in process.

    Deteriorations are made frequent (0.5 per patient-day) so that 240 patients × 24 h
    hold enough episodes for a patient split with CV folds and a meaningful gate; and
    every one progresses to its outcome (none settles, the ward rescues none), so that
    a cohort this small carries a clear signal for the machinery under test. What the
    model is worth on a realistic ward is the clinical benchmark's to measure.
    """
    from pipelines.cohort import build_cohort

    base = load_settings(environ={})
    sim = base.simulator.model_copy(
        update={
            "patients": 240,
            "hours": 24,
            "seed": 5,
            "episodes": base.simulator.episodes.model_copy(
                update={"deterioration_rate_per_day": 0.5, "enrichment": 1.0, "recover_share": 0.0}
            ),
            "rescue": base.simulator.rescue.model_copy(update={"trigger": "none"}),
        }
    )
    return build_cohort(sim, base.features)


@pytest.fixture(scope="session")
def cohort_rows(cohort: Any) -> Any:
    from training.dataset import labelled_rows

    return labelled_rows(cohort.features, cohort.labels)


@pytest.fixture(scope="session")
def mlflow_overlay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A real MLflow tracking server for the session (tracking store on the embedded
    PostgreSQL, which it starts; local artifacts)."""
    run = tmp_path_factory.mktemp("mlflow")
    overlay = isolated_stack_overlay(run, ["mlflow"])
    path = run / "overlay.yaml"
    path.write_text(yaml.safe_dump(overlay))
    s = load_settings(path, environ={})
    try:
        up(s, create_topics=False)
        yield overlay
    finally:
        down(s)


# A tuning budget small enough for tests; the demo and `make train` use conf/base.yaml's.
TINY_TRAINING: dict[str, Any] = {
    "families": ["logistic_regression", "xgboost"],
    "trials": 2,
    "timeout_s": None,
    "gate": {"bootstrap": 60},
}


@pytest.fixture
def training_settings(mlflow_overlay: dict[str, Any], tmp_path: Path) -> Settings:
    """Settings on the session MLflow server, with a registered model of this test's own."""
    tag = uuid.uuid4().hex[:8]
    return make_settings(
        tmp_path,
        run_dir=mlflow_overlay["run_dir"],
        local_stack=mlflow_overlay["local_stack"],
        mlflow=mlflow_overlay["mlflow"],
        training={
            **TINY_TRAINING,
            "experiment": f"test-{tag}",
            "registered_model": f"vigil-test-{tag}",
            "reports_dir": str(tmp_path / "reports"),
        },
        logging={"format": "text"},
    )


# --------------------------------------------------------------------------- airflow
@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory: pytest.TempPathFactory, stack_overlay: dict[str, Any]) -> Path:
    """An Airflow home with a migrated metadata database — on the session's PostgreSQL,
    as by default (a database of its own) — and this repo's dags/."""
    from ops.airflowcli import migrate

    home = tmp_path_factory.mktemp("airflow-home")
    s = make_settings(home, run_dir=stack_overlay["run_dir"], local_stack=stack_overlay[
        "local_stack"], airflow={"database": f"airflow_{uuid.uuid4().hex[:8]}"})  # fmt: skip
    migrate(home, s)
    return home


def run_dag(home: Path, settings: Settings, dag_id: str, tmp: Path) -> Any:
    """``airflow dags test <dag_id>`` with ``settings`` as the Vigil config (no retries)."""
    from ops.airflowcli import dags_test

    return dags_test(home, settings, dag_id, tmp)


def asset_events(home: Path, uri: str) -> int:
    """Asset events recorded for ``uri`` in the Airflow metadata database."""
    from ops.airflowcli import metadata_rows

    rows = metadata_rows(
        home,
        "SELECT count(*) FROM asset_event e JOIN asset a ON a.id = e.asset_id WHERE a.uri = :uri",
        uri=uri,
    )
    return int(str(rows[0][0]))
