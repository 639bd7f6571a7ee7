"""Helpers shared by benchmarks: a private stack, machine facts, result files."""

from __future__ import annotations

import json
import os
import platform
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import psutil
import yaml

from stack.db import recreate_database
from stack.localstack import down, endpoints, free_port, up
from stack.settings import Settings, load_settings

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def versions(*packages: str) -> dict[str, str]:
    return {p: version(p) for p in packages}


@contextmanager
def private_stack(services: list[str], **overlay: Any) -> Iterator[tuple[Settings, Path]]:
    """A stack on free loopback ports in a temporary folder, stopped afterwards."""
    with tempfile.TemporaryDirectory(prefix="vigil-bench-") as tmp:
        root = Path(tmp)
        data = {
            "run_dir": str(root / "run"),
            "lake": {"root": str(root / "lake")},
            "mlflow": {"local_store": str(root / "mlruns")},
            "local_stack": {
                "kafka_port": free_port(),
                "postgres_port": free_port(),
                "mlflow_port": free_port(),
                "services": services,
            },
            "logging": {"level": "WARNING", "format": "text"},
            **overlay,
        }
        path = root / "overlay.yaml"
        path.write_text(yaml.safe_dump(data))
        settings = load_settings(path, environ={})
        try:
            up(settings, create_topics=False)
            yield settings, path
        finally:
            down(settings)


def write_result(name: str, result: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": name, "when": datetime.now(UTC).isoformat(), **result}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def fresh_lake_and_database(base: Settings, name: str) -> Settings:
    """``base`` with a lake folder and a (re-created) PostgreSQL database of its own."""
    url = endpoints(base).database_url
    own = recreate_database(url, name)
    return base.model_copy(
        update={
            "lake": base.lake.model_copy(update={"root": f"{base.lake.root}-{name}"}),
            "postgres": base.postgres.model_copy(update={"url": own}),
        }
    )
