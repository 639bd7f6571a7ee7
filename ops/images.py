"""Pinned requirements of Vigil's lean stream image (the lander and the scorer).

The jobs image carries the whole lock (Spark, Airflow, Great Expectations, MLflow,
training); the lander and the scorer need a fraction of it. ``deploy/requirements-stream.txt``
pins :data:`STREAM_ROOTS` and everything they require at the lock's versions, and
``deploy/Dockerfile``'s ``stream`` stage installs only that. Regenerate it after the lock
changes (a unit test fails while it is stale)::

    python -m ops.images          # writes deploy/requirements-stream.txt
    python -m ops.images --check  # exit 1 if it is stale
"""

from __future__ import annotations

from pathlib import Path

import typer

from serving.package import serving_requirements
from stack.settings import REPO_ROOT

STREAM_REQUIREMENTS = REPO_ROOT / "deploy" / "requirements-stream.txt"
# What the lander and the scorer import (an integration test records every module their
# processes load on the real stack and checks it against the pinned set). The scorer
# calls the model service over HTTP: no model libraries, no MLflow.
STREAM_ROOTS = (
    "confluent-kafka", "crc32c", "httpx", "kafka-python", "numpy", "orjson", "pandas",
    "prometheus-client", "psutil", "psycopg", "psycopg-binary", "pyarrow", "pydantic",
    "pyyaml", "typer",
)  # fmt: skip
HEADER = (
    "# The lander's and the scorer's requirements (deploy/Dockerfile, stage stream),\n"
    "# pinned at requirements.lock's versions. Generated: python -m ops.images\n"
)


def stream_requirements() -> str:
    """The file's content: :data:`STREAM_ROOTS` and what they require, pinned."""
    return HEADER + "\n".join(serving_requirements(STREAM_ROOTS)) + "\n"


def main(
    check: bool = typer.Option(False, help="Exit 1 if the file is stale instead of writing."),
    out: Path = typer.Option(STREAM_REQUIREMENTS, help="Where the requirements go."),
) -> None:
    """Write (or check) the stream image's pinned requirements."""
    want = stream_requirements()
    if check:
        if not out.exists() or out.read_text() != want:
            typer.echo(f"{out} is stale: run python -m ops.images", err=True)
            raise typer.Exit(1)
        typer.echo(f"{out} is up to date")
        return
    out.write_text(want)
    typer.echo(f"wrote {out} ({want.count('==')} packages)")


if __name__ == "__main__":
    typer.run(main)
