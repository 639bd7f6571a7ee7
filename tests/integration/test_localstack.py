"""The embedded stack: idempotent start, health, clear errors, clean stop."""

from __future__ import annotations

import socket
from pathlib import Path

import psutil
import psycopg
import pytest
import yaml

from stack.localstack import (
    KafkaService,
    StackError,
    down,
    endpoints,
    status,
    up,
)
from stack.settings import Settings, load_settings
from tests.conftest import isolated_stack_overlay

pytestmark = pytest.mark.integration


def test_session_stack_is_healthy_and_real(stack_settings: Settings) -> None:
    st = status(stack_settings)
    assert st["kafka"]["healthy"]
    assert st["postgres"]["healthy"]
    with psycopg.connect(endpoints(stack_settings).database_url) as conn:
        version = conn.execute("SHOW server_version_num").fetchone()
    assert version is not None
    assert int(version[0]) >= 180000
    # Starting again reuses what runs.
    assert up(stack_settings, create_topics=False) == {"kafka": "reused", "postgres": "reused"}


def _own_settings(tmp_path: Path, services: list[str]) -> Settings:
    p = tmp_path / "o.yaml"
    p.write_text(yaml.safe_dump(isolated_stack_overlay(tmp_path / "run", services)))
    return load_settings(p, environ={})


@pytest.mark.slow
def test_full_stack_up_down_leaves_no_process(tmp_path: Path) -> None:
    s = _own_settings(tmp_path, ["kafka", "postgres", "mlflow"])
    try:
        assert up(s) == {"kafka": "started", "postgres": "started", "mlflow": "started"}
        st = status(s)
        pids = [int(v["pid"]) for v in st.values()]  # type: ignore[call-overload]
        assert all(v["healthy"] for v in st.values())
        family = {
            p for pid in pids for p in [pid, *(c.pid for c in psutil.Process(pid).children(True))]
        }
        assert up(s)["mlflow"] == "reused"
    finally:
        stopped = down(s)
    assert stopped == {"mlflow": True, "postgres": True, "kafka": True}
    psutil.wait_procs([psutil.Process(p) for p in family if psutil.pid_exists(p)], timeout=10)
    alive = [p for p in family if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
    assert alive == []
    assert down(s) == {"mlflow": False, "postgres": False, "kafka": False}


def test_a_taken_port_is_reported_with_the_service_name(tmp_path: Path) -> None:
    s = _own_settings(tmp_path, ["kafka"])
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", s.local_stack.kafka_port))
        squatter.listen()
        with pytest.raises(StackError, match=r"kafka: port 127\.0\.0\.1:\d+ is taken"):
            KafkaService(s).start()


def test_a_service_that_never_gets_healthy_names_its_log(tmp_path: Path) -> None:
    s = _own_settings(tmp_path, ["kafka"])
    s = s.model_copy(
        update={"local_stack": s.local_stack.model_copy(update={"start_timeout_s": 2})}
    )

    class Broken(KafkaService):
        def _start(self) -> None:  # a process that runs but never answers
            from stack.localstack import _spawn

            _spawn(["sleep", "30"], self.log, self.pid_file)

        marker = "sleep"

    svc = Broken(s)
    try:
        with pytest.raises(
            StackError, match=r"kafka did not become healthy .* see its log .*kafka\.log"
        ):
            svc.start()
    finally:
        svc.stop()
    assert svc.pid() is None


def test_configured_production_addresses_disable_embedded_services() -> None:
    s = load_settings(
        environ={
            "VIGIL__KAFKA__BOOTSTRAP_SERVERS": "kafka.prod:9092",
            "VIGIL__POSTGRES__URL": "postgresql://vigil@db.prod/vigil",
            "VIGIL__MLFLOW__TRACKING_URI": "https://mlflow.prod",
        }
    )
    assert up(s, create_topics=False) == {}
    ep = endpoints(s)
    assert ep.bootstrap_servers == "kafka.prod:9092"
    assert ep.mlflow_uri == "https://mlflow.prod"


@pytest.mark.slow
def test_mlflow_on_the_embedded_postgresql_keeps_runs_and_hides_the_password(
    tmp_path: Path,
) -> None:
    from mlflow.tracking import MlflowClient

    from stack.localstack import mlflow_backend_store_uri

    # Only MLflow asked for: on PostgreSQL (the default store) it brings PostgreSQL up.
    overlay = isolated_stack_overlay(tmp_path / "run", ["mlflow"])
    assert load_settings(environ={}).mlflow.backend_store == "postgres"
    p = tmp_path / "o.yaml"
    p.write_text(yaml.safe_dump(overlay))
    s = load_settings(p, environ={})
    try:
        assert up(s, create_topics=False) == {"postgres": "started", "mlflow": "started"}
        client = MlflowClient(endpoints(s).mlflow_uri)
        exp = client.create_experiment("pg-store")
        run = client.create_run(exp)
        client.log_metric(run.info.run_id, "roc_auc", 0.9)
        # The server's command line, readable by every local user, holds no password.
        pid = int(status(s)["mlflow"]["pid"])  # type: ignore[call-overload]
        password = psycopg.conninfo.conninfo_to_dict(endpoints(s).database_url)["password"]
        assert password
        cmdline = " ".join(psutil.Process(pid).cmdline())
        assert password not in cmdline
        # MLflow's tables live in their own database of the same server.
        uri = mlflow_backend_store_uri(s)
        assert uri.startswith("postgresql+psycopg://")
        assert uri.endswith("/mlflow")
        with psycopg.connect(uri.replace("postgresql+psycopg://", "postgresql://")) as conn:
            found = conn.execute("SELECT count(*) FROM experiments WHERE name = 'pg-store'")
            assert found.fetchone() == (1,)
    finally:
        down(s)
    # A restarted stack serves the same runs.
    try:
        up(s, create_topics=False)
        again = MlflowClient(endpoints(s).mlflow_uri).get_run(run.info.run_id)
        assert again.data.metrics["roc_auc"] == 0.9
    finally:
        down(s)
