"""``make demo-airflow``: the main job through Airflow instead of direct calls.

Backfills a ward into Kafka, then runs the DAGs in order with ``airflow dags test``
against the embedded stack — ingest → ETL → features → training → deployment — each a
real DAG run recorded in the Airflow metadata database under ``<run_dir>/airflow``, so
``make airflow`` shows them in the UI afterwards.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from ops.airflowcli import dags_test, home_of, metadata_rows, migrate
from pipelines.produce import simulate_to_kafka, with_simulator
from stack.localstack import up
from stack.logs import configure_logging
from stack.settings import LoggingSettings, Settings, load_settings

CHAIN = ("vigil_ingest", "vigil_etl", "vigil_features", "vigil_training", "vigil_deployment")


def _task_states(home: Path, dag_id: str) -> dict[str, str]:
    rows = metadata_rows(
        home,
        "SELECT task_id, state FROM task_instance WHERE dag_id = :dag AND run_id = ("
        " SELECT run_id FROM dag_run WHERE dag_id = :dag ORDER BY id DESC LIMIT 1)",
        dag=dag_id,
    )
    return {str(t): str(s) for t, s in rows}


_SKIP = re.compile(r"Skipping task\..*?reason=(?P<why>.+?)(?:\s+loc=\S+)?\s*$")


def skip_reasons(log: str) -> list[str]:
    """Why tasks of an ``airflow dags test`` run were skipped, from its task log lines."""
    out = []
    for line in log.splitlines():
        m = _SKIP.search(line)
        if m:
            out.append(m["why"].strip().strip("'\""))
    return out


def run_airflow_demo(settings: Settings, console: Console) -> bool:
    up(settings)
    home = home_of(settings)
    migrate(home, settings)
    sent, _ = simulate_to_kafka(settings)
    console.print(f"simulated {sent.stats.patients} patients: "
                  f"{sent.stats.vitals_messages:,} vital-sign messages into Kafka")  # fmt: skip
    table = Table("DAG", "tasks", "seconds", "note")
    ok = True
    for dag_id in CHAIN:
        t0 = time.perf_counter()
        with console.status(f"airflow dags test {dag_id}"):
            run = dags_test(home, settings, dag_id, home)
        states = _task_states(home, dag_id)
        note = "; ".join(skip_reasons(run.stdout + run.stderr))[:300]
        table.add_row(dag_id, ", ".join(f"{k}: {v}" for k, v in states.items()),
                      f"{time.perf_counter() - t0:.0f}", note)  # fmt: skip
        if run.returncode != 0 or "failed" in states.values():
            console.print(table)
            console.print((run.stdout + run.stderr)[-4000:])
            console.print(f"[red]{dag_id} failed[/red]")
            return False
    console.print(table)
    console.print(
        f"Watch it in the UI: `make airflow`, then http://127.0.0.1:8080 (no login); these "
        f"runs are under each DAG's runs. Airflow home: {home}"
    )
    return ok


def main(
    patients: int = typer.Option(200, help="Patients on the ward."),
    hours: float = typer.Option(24.0, help="Simulated hours."),
) -> None:
    """Run the main job through Airflow on the embedded stack."""
    configure_logging(LoggingSettings(level="WARNING", format="text"))
    seed = int(time.time()) % 1_000_000
    s = with_simulator(load_settings(), patients=patients, hours=hours, seed=seed)
    if not run_airflow_demo(s, Console()):
        raise typer.Exit(1)


if __name__ == "__main__":
    typer.run(main)
