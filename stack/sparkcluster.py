"""A Spark standalone cluster from the installed pyspark: ``make spark-cluster``.

One master and ``workers`` workers, each a JVM started with pyspark's own ``spark-class``
(no Spark download: the jars of the pip package hold the standalone deploy classes), on
loopback, with their logs, work folders and process ids under ``<run_dir>/spark-cluster``.
Point the stages at it with ``spark.master: spark://127.0.0.1:<port>`` (``make etl`` and
``make features`` run unchanged on it: ``tests/integration/test_spark_cluster.py``).

On several hosts the same classes run a real cluster: start the master on one host and a
worker on each (``spark-class org.apache.spark.deploy.worker.Worker spark://<master>:7077``),
then set ``spark.driver_host`` to an address the workers reach this host at and
``spark.ship_code: true`` (see ``stack.spark``).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from stack.localstack import free_port, kill_group
from stack.settings import Settings

HOST = "127.0.0.1"


class SparkClusterError(RuntimeError):
    """The cluster did not start (the message names the process and its log)."""


@dataclass(frozen=True)
class ClusterInfo:
    master_url: str
    ui_url: str
    workers: int


def _spark_class() -> str:
    import pyspark

    return str(Path(pyspark.__file__).parent / "bin" / "spark-class")


def _env() -> dict[str, str]:
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "SPARK_NO_DAEMONIZE": "1"}
    env.pop("SPARK_HOME", None)  # pyspark's own, found by spark-class
    return env


class SparkCluster:
    """Start, find and stop a standalone cluster under ``<run_dir>/spark-cluster``.

    Args:
        workers: worker JVMs to start.
        cores: cores each worker offers.
        memory: memory each worker offers (``1g``).
    """

    def __init__(
        self, settings: Settings, *, workers: int = 2, cores: int = 1, memory: str = "1g"
    ) -> None:
        self.root = settings.run_path / "spark-cluster"
        self.workers, self.cores, self.memory = workers, cores, memory
        self.state = self.root / "cluster.json"

    # ------------------------------------------------------------------ lifecycle
    def info(self) -> ClusterInfo | None:
        """The running cluster's addresses (None when none runs)."""
        try:
            data = json.loads(self.state.read_text())
        except FileNotFoundError:
            return None
        if not all(_alive(pid) for pid in data["pids"]):
            return None
        return ClusterInfo(data["master_url"], data["ui_url"], len(data["pids"]) - 1)

    def start(self, timeout_s: float = 120.0) -> ClusterInfo:
        """Start the master and the workers; returns once every worker has registered."""
        running = self.info()
        if running is not None:
            return running
        self.stop()  # leftovers of a cluster that half died
        self.root.mkdir(parents=True, exist_ok=True)
        port, ui = free_port(), free_port()
        master_url, ui_url = f"spark://{HOST}:{port}", f"http://{HOST}:{ui}"
        pids = [self._spawn("master", ["org.apache.spark.deploy.master.Master",
                                       "--host", HOST, "--port", str(port),
                                       "--webui-port", str(ui)])]  # fmt: skip
        self._save(master_url, ui_url, pids)
        self._wait(ui_url, 0, timeout_s, "master")
        for i in range(self.workers):
            work = self.root / f"work-{i}"
            work.mkdir(exist_ok=True)
            pids.append(self._spawn(f"worker-{i}", [
                "org.apache.spark.deploy.worker.Worker", "--host", HOST,
                "--cores", str(self.cores), "--memory", self.memory,
                "--webui-port", str(free_port()), "--work-dir", str(work), master_url,
            ]))  # fmt: skip
            self._save(master_url, ui_url, pids)
        self._wait(ui_url, self.workers, timeout_s, "workers")
        return ClusterInfo(master_url, ui_url, self.workers)

    def stop(self) -> bool:
        """Stop every process of the cluster; False if none was running."""
        try:
            data = json.loads(self.state.read_text())
        except FileNotFoundError:
            return False
        for pid in reversed(data["pids"]):
            kill_group(pid, timeout_s=15.0)  # spark-class execs java in its group
        self.state.unlink(missing_ok=True)
        return True

    # ------------------------------------------------------------------ helpers
    def _spawn(self, name: str, args: list[str]) -> int:
        log = (self.root / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            [_spark_class(), *args], env=_env(), stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.root,
        )  # fmt: skip
        log.close()
        return proc.pid

    def _save(self, master_url: str, ui_url: str, pids: list[int]) -> None:
        self.state.write_text(
            json.dumps({"master_url": master_url, "ui_url": ui_url, "pids": pids})
        )

    def _wait(self, ui_url: str, workers: int, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.info() is None:
                break  # a process died: say so now
            try:
                with urllib.request.urlopen(f"{ui_url}/json/", timeout=2) as r:
                    alive = json.load(r).get("aliveworkers", 0)
                if alive >= workers:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise SparkClusterError(
            f"the Spark {what} did not come up within {timeout_s:.0f} s; see the logs in"
            f" {self.root}"
        )


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a child of ours that exited is reaped, not counted)."""
    import psutil

    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # our own child: collect it if it has exited
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def main(argv: list[str]) -> int:
    from stack.settings import load_settings

    s = load_settings()
    cluster = SparkCluster(s, workers=int(os.environ.get("SPARK_WORKERS", "2")))
    if argv[:1] == ["stop"]:
        print("spark cluster stopped" if cluster.stop() else "no spark cluster was running")
        return 0
    info = cluster.start()
    print(f"Spark master: {info.master_url} ({info.workers} workers); UI: {info.ui_url}")
    print(f"Run a stage on it: VIGIL__SPARK__MASTER={info.master_url} make etl")
    print("Stop it: make spark-cluster-stop (or make down)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
