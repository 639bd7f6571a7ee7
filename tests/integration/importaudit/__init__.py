"""Run the lander's and the scorer's processes as the lean stream image would
(``ops.images``, ``deploy/requirements-stream.txt``): ``sitecustomize.py`` here refuses
every module the image does not install and records what each process imported."""

from __future__ import annotations

import json
import os
import sys
from importlib.metadata import packages_distributions
from pathlib import Path
from typing import Any

from ops.images import STREAM_REQUIREMENTS
from stack.localstack import endpoints
from stack.settings import Settings
from tests.integration.importaudit.sitecustomize import canonical, installed_in_image

HERE = Path(__file__).parent


def as_stream_image(env: dict[str, str], out: Path) -> dict[str, str]:
    """``env`` for a process (and its children) that can import only what the stream
    image installs; each records its imports in ``out``."""
    path = os.pathsep.join(p for p in (str(HERE), env.get("PYTHONPATH", "")) if p)
    return {**env, "PYTHONPATH": path, "VIGIL_IMPORT_AUDIT": str(out),
            "VIGIL_IMPORT_ALLOWED": str(STREAM_REQUIREMENTS)}  # fmt: skip


def as_deployed(s: Settings) -> Settings:
    """``s`` with every address given, as in a deployment (no embedded-stack code runs)."""
    e = endpoints(s)
    update: dict[str, Any] = {
        "kafka": s.kafka.model_copy(update={"bootstrap_servers": e.bootstrap_servers}),
        "postgres": s.postgres.model_copy(update={"url": e.database_url}),
    }
    return s.model_copy(update=update)


def audits(out: Path) -> list[dict[str, list[str]]]:
    """What each audited process imported and was refused."""
    return [json.loads(f.read_text()) for f in sorted(out.glob("*.json"))]


def imported_outside_the_image(out: Path) -> set[str]:
    """Third-party modules a process imported that the image does not install (none,
    unless the refusing finder was bypassed)."""
    allowed = installed_in_image(STREAM_REQUIREMENTS)
    owners = packages_distributions()
    imported = {top for audit in audits(out) for top in audit["imported"]}
    return {
        top
        for top in imported - set(sys.stdlib_module_names)
        if owners.get(top) and not {canonical(d) for d in owners[top]} & allowed
    }
