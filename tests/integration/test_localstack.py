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
