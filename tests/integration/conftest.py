"""Fixtures shared by the integration tests of the service and the scorer.

``served``: one BentoML service process per test session (per pytest-xdist worker) that
serves a model trained here (a champion and a challenger), on a free port.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pandas as pd
import psycopg
import pytest

from pipelines.produce import with_simulator
from serving.server import ServingProcess
from stack.db import drop_database, recreate_database
from stack.kafka import KafkaClient
from stack.localstack import endpoints, free_port
from stack.settings import Settings
from tests.conftest import TINY_TRAINING
from training.job import run_training
from training.promotion import run_promote


@pytest.fixture(scope="session")
def served(
    stack_overlay: dict[str, Any],
    mlflow_overlay: dict[str, Any],
    cohort_rows: pd.DataFrame,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Any]]:
    """A champion (logistic regression) and a challenger (XGBoost), served on a free port."""
    from tests.conftest import make_settings

    tmp = tmp_path_factory.mktemp("served")
    tag = uuid.uuid4().hex[:8]
    base = make_settings(
        tmp,
        run_dir=str(tmp / "run"),
        local_stack={**stack_overlay["local_stack"],
                     "mlflow_port": mlflow_overlay["local_stack"]["mlflow_port"]},
        mlflow=mlflow_overlay["mlflow"],
        training={**TINY_TRAINING, "families": ["logistic_regression"], "trials": 1,
                  "experiment": f"serve-{tag}", "registered_model": f"vigil-serve-{tag}",
                  "reports_dir": str(tmp / "reports")},
        serving={"port": free_port(), "reload_interval_s": 1.0},
        logging={"format": "text"},
    )  # fmt: skip
    champion = run_training(base, rows=cohort_rows)
    assert run_promote(base, rows=cohort_rows).promoted
    xgb = base.model_copy(
        update={"training": base.training.model_copy(update={"families": ("xgboost",)})}
    )
    challenger = run_training(xgb, rows=cohort_rows)  # stays @challenger: the shadow
    proc = ServingProcess(base)
    proc.start_or_explain()
    try:
        yield {
            "settings": base,
            "proc": proc,
            "url": proc.url,
            "champion": champion.model_version,
            "challenger": challenger.model_version,
        }
    finally:
        proc.stop()


@contextlib.contextmanager
def _own_database(s: Settings) -> Iterator[Settings]:
    """``s`` with a PostgreSQL database of its own, dropped afterwards."""
    name = f"s_{uuid.uuid4().hex[:10]}"
    url = recreate_database(endpoints(s).database_url, name)
    try:
        yield s.model_copy(update={"postgres": s.postgres.model_copy(update={"url": url})})
    finally:
        drop_database(url, name)


@pytest.fixture
def scorer_settings(served: dict[str, Any], stack_settings: Settings) -> Iterator[Settings]:
    """The served model + this test's topics, group and a database of its own."""
    base: Settings = served["settings"]
    with _own_database(stack_settings) as own:
        yield _scorer_settings(own, base)


def _scorer_settings(stack_settings: Settings, base: Settings) -> Settings:
    s = stack_settings.model_copy(
        update={
            "local_stack": base.local_stack,
            "mlflow": base.mlflow,
            "training": base.training,
            "serving": base.serving,
            "scorer": stack_settings.scorer.model_copy(
                update={
                    "group_id": f"scorer-{uuid.uuid4().hex[:6]}",
                    "new_group_starts_at": "earliest",  # events are produced before it runs
                    "idle_timeout_s": 4.0,
                    "backoff_initial_s": 0.2,
                    "backoff_max_s": 2.0,
                    "metrics_port": free_port(),
                }
            ),
        }
    )
    return with_simulator(s, patients=30, hours=2.5)


def _faulty(s: Settings, **sim: Any) -> Settings:
    faults = s.simulator.faults.model_copy(update={"malformed": 0.01, "duplicate": 0.01})
    return with_simulator(s, faults=faults.model_dump(), **sim)


def _query(s: Settings, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(endpoints(s).database_url) as conn:
        return conn.execute(sql).fetchall()


def _topic_messages(s: Settings, topic: str) -> list[dict[str, Any]]:
    """Every message on ``topic``, read from the start by a group-less consumer."""
    client = KafkaClient(s.kafka, endpoints(s).bootstrap_servers)
    c = client.consumer(None)
    try:
        parts = client.all_partitions([topic])
        marks = c.watermarks(parts)
        c.assign(parts)
        for tp, (lo, _hi) in marks.items():
            c.seek(tp, lo)
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + 30
        while any(c.position(tp) < hi for tp, (_lo, hi) in marks.items()):
            out += [json.loads(r.value or b"") for r in c.poll_batch(10_000, 0.5)]
            assert time.monotonic() < deadline, "could not read the topic to its end"
        return out
    finally:
        c.close()


def _wait_version(url: str, version: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if httpx.post(f"{url}/model", json={}).json()["champion"]["version"] == version:
            return
        time.sleep(0.3)
    raise AssertionError(f"the service did not swap to v{version}")
