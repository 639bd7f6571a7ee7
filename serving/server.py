"""Run the BentoML service as a managed process (``make serve``, the demo, the tests).

The service reads its configuration like every entry point (``load_settings``); the
parent writes the effective settings to a YAML file under the run dir and points
``VIGIL_CONFIG`` at it, so the service sees exactly the caller's settings.
"""

from __future__ import annotations

import os
import sys
import urllib.request
from pathlib import Path

import psutil
import yaml

from serving.launch import PROMETHEUS_DIR_ENV
from stack.localstack import ManagedService, spawn, write_private
from stack.settings import REPO_ROOT, Settings


class ServingProcess(ManagedService):
    name = "bentoml"
    marker = "serving.launch"

    def pid(self) -> int | None:
        # `bentoml serve` (run by serving.launch) becomes the circus arbiter, retitled
        # "circusd"; its workers are its children (each in a session of its own),
        # stopped with it.
        try:
            pid = int(self.pid_file.read_text().strip())
            proc = psutil.Process(pid)
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            cmd = " ".join(proc.cmdline())
            return pid if "circusd" in cmd or self.marker in cmd else None
        except (FileNotFoundError, ValueError, psutil.Error):
            return None

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.host = settings.serving.host

    @property
    def port(self) -> int:
        return self.s.serving.port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def healthy(self) -> bool:
        with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as r:
            return bool(r.status == 200)

    @property
    def prometheus_dir(self) -> Path:
        """This service's own Prometheus multiprocess directory (``serving.launch``)."""
        return self.run / f"prometheus-{self.port}"

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "serving.launch",  # bentoml's CLI, with this service's own metrics directory
            "serve",
            "serving.service:Vigil",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--working-dir",
            str(REPO_ROOT),
        ]

    def _start(self) -> None:
        config = self.run / "serving-settings.yaml"
        # May hold secrets (the API key, a database URL with its password): owner-only.
        write_private(config, yaml.safe_dump(self.s.model_dump(mode="json")))
        env = dict(os.environ)
        env["VIGIL_CONFIG"] = str(config)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env[PROMETHEUS_DIR_ENV] = str(self.prometheus_dir)
        env.setdefault("BENTOML_DO_NOT_TRACK", "true")
        env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        spawn(self.command(), self.log, self.pid_file, env=env)

    def start_or_explain(self) -> str:
        """Start and wait; on failure the error carries the service log's last lines."""
        try:
            return self.start()
        except Exception as exc:
            tail = (
                self.log.read_text(errors="replace").splitlines()[-15:] if self.log.exists() else []
            )
            raise RuntimeError(f"{exc}\n--- {self.log} ---\n" + "\n".join(tail)) from exc
