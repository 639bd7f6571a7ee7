"""ETL and features on a real Spark standalone cluster (``make spark-cluster``): a master
and two workers from the installed pyspark on loopback, the stages run unchanged as
``make etl`` / ``make features`` do, and every table and lake zone equals the local run's."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml

from features.spec import FEATURES_TABLE, FEATURES_ZONE, LABELS_ZONE
from pipelines.etl.job import run_etl
from pipelines.features.job import run_features
from stack.catalog import PROCESSED_VITALS, QUARANTINE
from stack.db import connect, drop_database, recreate_database
from stack.localstack import endpoints
from stack.settings import Settings
from stack.sparkcluster import ClusterInfo, SparkCluster
from tests.conftest import make_settings
from tests.integration.test_etl import lake, land

pytestmark = pytest.mark.integration

TABLES = ("vitals_minute", "quarantine", FEATURES_TABLE, "feature_labels")
ZONES = (PROCESSED_VITALS, QUARANTINE, FEATURES_ZONE, LABELS_ZONE)
VOLATILE = {"run_id"}  # differs between any two runs, by design


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterInfo]:
    s = make_settings(tmp_path_factory.mktemp("spark-cluster"))
    c = SparkCluster(s, workers=2, cores=1, memory="1g")
    info = c.start()
    try:
        yield info
    finally:
        assert c.stop()
        assert c.info() is None


def _digest(frame: pd.DataFrame) -> tuple[int, str]:
    frame = frame.drop(columns=[c for c in frame.columns if c in VOLATILE])
    frame = frame.sort_values(list(frame.columns)).reset_index(drop=True)
    return len(frame), hashlib.sha256(frame.to_csv(index=False).encode()).hexdigest()[:16]


def _results(s: Settings) -> dict[str, tuple[int, str]]:
    out = {}
    with connect(s) as conn:
        for table in TABLES:
            cur = conn.execute(f"SELECT * FROM {table}")
            cols = [d.name for d in cur.description or []]
            out[table] = _digest(pd.DataFrame(cur.fetchall(), columns=cols))
    for zone in ZONES:
        out[zone] = _digest(lake(s).read_table(zone).to_pandas())
    return out


def _run(module: str, s: Settings, tmp: Path) -> subprocess.CompletedProcess[str]:
    config = tmp / f"{module}.yaml"
    config.write_text(yaml.safe_dump(json.loads(s.model_dump_json())))
    return subprocess.run(
        [sys.executable, "-m", module], env={**os.environ, "VIGIL_CONFIG": str(config)},
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip


def _apps(info: ClusterInfo) -> list[dict[str, object]]:
    with urllib.request.urlopen(f"{info.ui_url}/json/", timeout=5) as r:
        return list(json.load(r)["completedapps"])


def test_etl_and_features_on_a_cluster_equal_the_local_run(
    etl_settings: Settings, cluster: ClusterInfo, tmp_path: Path
) -> None:
    local, _ = land(etl_settings, patients=20, hours=3)
    # The same raw zone, a lake and a database of the cluster run's own.
    root = tmp_path / "cluster-lake"
    shutil.copytree(lake(local).path("raw"), root / "raw")
    name = f"c_{uuid.uuid4().hex[:8]}"
    url = recreate_database(endpoints(local).database_url, name)
    on_cluster = local.model_copy(
        update={
            "lake": local.lake.model_copy(update={"root": str(root)}),
            "postgres": local.postgres.model_copy(update={"url": url}),
            "spark": local.spark.model_copy(
                update={"master": cluster.master_url, "ship_code": True}
            ),
            "etl": local.etl.model_copy(update={"reports_dir": tmp_path / "reports"}),
        }
    )
    try:
        for module in ("pipelines.etl", "pipelines.features"):
            done = _run(module, on_cluster, tmp_path)
            assert done.returncode == 0, done.stderr[-3000:]
        assert run_etl(local).status == "succeeded"  # local[2], in this process
        run_features(local)
        got, want = _results(on_cluster), _results(local)
    finally:
        drop_database(url, name)
    assert got == want
    assert all(rows > 0 for rows, _ in want.values() if rows is not None)
    # Both stages ran as applications of the cluster, on its executors.
    apps = _apps(cluster)
    assert len(apps) >= 2
    assert all(int(str(a["cores"])) >= 1 for a in apps)


def _in_a_session(s: Settings, tmp: Path, body: str) -> subprocess.CompletedProcess[str]:
    """``body`` run in a new process with ``spark``, the session of settings ``s``."""
    config = tmp / f"session-{uuid.uuid4().hex[:6]}.yaml"
    config.write_text(yaml.safe_dump(json.loads(s.model_dump_json())))
    script = (
        "from stack.settings import load_settings\n"
        "from stack.spark import spark_session\n"
        f"spark = spark_session(load_settings())\n{body}spark.stop()\n"
    )
    env = {**os.environ, "VIGIL_CONFIG": str(config), "PYTHONWARNINGS": "ignore"}
    env.pop("SPARK_LOCAL_IP", None)
    return subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True,
        timeout=300, check=False, cwd=tmp,
    )  # fmt: skip


def test_shipped_code_is_what_executors_import(
    cluster: ClusterInfo, tmp_path: Path, settings: Settings
) -> None:
    """``spark.ship_code``: a task on a worker imports Vigil from the zip the session sent,
    so workers without Vigil installed run the same code as the driver."""
    s = settings.model_copy(
        update={
            "run_dir": tmp_path / "run",
            "spark": settings.spark.model_copy(
                update={"master": cluster.master_url, "ship_code": True}
            ),
        }
    )
    done = _in_a_session(s, tmp_path, (
        "where = spark.sparkContext.parallelize([0], 1)"
        ".map(lambda _: __import__('stack.contracts').__file__).collect()\n"
        "print('WHERE', where[0])\n"
    ))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    where = next(line for line in done.stdout.splitlines() if line.startswith("WHERE"))
    assert ".zip" in where, where
    assert "/vigil-" in where, where


def test_the_driver_jvm_logs_warnings_to_stdout_not_info_to_stderr(
    tmp_path: Path, settings: Settings
) -> None:
    """Airflow 3 files every stderr line of a task under ERROR: Spark's default log4j
    profile put ~10 start-up lines there (INFO banners, harmless WARNs). The driver JVM now
    logs warnings and errors only, to stdout; stderr keeps the JVM's own one-line note."""
    s = settings.model_copy(
        update={"run_dir": tmp_path / "run",
                "spark": settings.spark.model_copy(update={"master": "local[1]"})}
    )  # fmt: skip
    done = _in_a_session(s, tmp_path, "print('ROWS', spark.range(10).count())\n")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ROWS 10" in done.stdout
    stderr = [line for line in done.stderr.splitlines()
              if line.strip() and "incubator modules" not in line]  # fmt: skip
    assert stderr == []
    assert "log4j2-defaults.properties" not in done.stdout + done.stderr
