"""Running Vigil's DAGs with the Airflow CLI: ``make airflow``, ``make demo-airflow``, tests.

Every Airflow process gets the same environment: an Airflow home (logs, and which
metadata DB it uses), this repository's ``dags/``, no example DAGs, DAGs unpaused at
creation, a login-free local UI on loopback, and the Vigil config the tasks load
(``VIGIL_CONFIG``).

The metadata DB (``airflow.metadata_db``) is chosen when the home is migrated and
remembered in it (``metadata-db.url``, owner-only): PostgreSQL — database
``airflow.database`` of Vigil's server, through psycopg 3, with the asyncio URL Airflow 3
also needs (``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC``, ``postgresql+psycopg_async``)
derived from it — or SQLite in the home. Every process on that home then uses the same
database, whichever Vigil config its tasks are given.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from stack.db import ensure_database
from stack.localstack import endpoints, mask_url, sqlalchemy_url, write_private
from stack.settings import REPO_ROOT, Settings

AIRFLOW = str(Path(sys.executable).parent / "airflow")
METADATA_URL_FILE = "metadata-db.url"  # in the Airflow home: its PostgreSQL database


def metadata_db_url(settings: Settings) -> str | None:
    """The SQLAlchemy URL of Airflow's metadata DB for ``settings`` (None: SQLite)."""
    if settings.airflow.metadata_db == "sqlite":
        return None
    return sqlalchemy_url(endpoints(settings).database_url, database=settings.airflow.database)


def home_metadata_url(home: Path) -> str:
    """The metadata DB the Airflow home ``home`` was migrated on (a SQLAlchemy URL)."""
    try:
        return (home / METADATA_URL_FILE).read_text().strip()
    except FileNotFoundError:
        return f"sqlite:///{home / 'airflow.db'}"


def metadata_rows(home: Path, query: str, **params: object) -> list[tuple[object, ...]]:
    """The rows of a read-only ``query`` (``:name`` parameters) on ``home``'s metadata DB."""
    from sqlalchemy import create_engine, text

    engine = create_engine(home_metadata_url(home))
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(query), params).fetchall()]
    finally:
        engine.dispose()


def airflow_env(
    home: Path, config: Path | None = None, *, retries: int | None = None
) -> dict[str, str]:
    """Environment for an Airflow process on ``home`` with Vigil's ``config``."""
    env = {
        **os.environ,
        # standalone starts its components as `airflow ...`: this venv's, not the PATH's
        "PATH": f"{Path(AIRFLOW).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__API__HOST": "127.0.0.1",
    }
    url = home_metadata_url(home)
    if not url.startswith("sqlite"):
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = url
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC"] = sqlalchemy_url(
            url, driver="psycopg_async"
        )
    if config is not None:
        env["VIGIL_CONFIG"] = str(config)
    if retries is not None:
        env["VIGIL_AIRFLOW_RETRIES"] = str(retries)
    return env


def migrate(home: Path, settings: Settings) -> None:
    """Create or upgrade the metadata database of ``home`` (idempotent), on the database
    ``settings`` choose, which ``home`` remembers from then on."""
    home.mkdir(parents=True, exist_ok=True)
    url = metadata_db_url(settings)
    if url is None:
        (home / METADATA_URL_FILE).unlink(missing_ok=True)
    else:
        ensure_database(endpoints(settings).database_url, settings.airflow.database)
        write_private(home / METADATA_URL_FILE, url)
    done = subprocess.run([AIRFLOW, "db", "migrate"], env=airflow_env(home), check=False,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    if done.returncode != 0:
        where = mask_url(home_metadata_url(home))
        raise RuntimeError(f"airflow db migrate failed on {where}:\n{done.stderr[-3000:]}")


def write_config(settings: Settings, path: Path) -> Path:
    """``settings`` as a complete Vigil config file, for tasks in other processes."""
    # May hold secrets (an API key, a database URL with its password): owner-only.
    write_private(path, yaml.safe_dump(settings.model_dump(mode="json")))
    return path


def dags_test(
    home: Path, settings: Settings, dag_id: str, workdir: Path, *, retries: int = 0
) -> subprocess.CompletedProcess[str]:
    """``airflow dags test <dag_id>``: one DAG run in this process tree, recorded in ``home``."""
    config = write_config(settings, workdir / f"vigil-{dag_id}.yaml")
    return subprocess.run(
        [AIRFLOW, "dags", "test", dag_id],
        env=airflow_env(home, config, retries=retries),
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )


def home_of(settings: Settings) -> Path:
    """The Airflow home of this deployment: ``<run_dir>/airflow``."""
    return settings.run_path / "airflow"


def standalone_env(home: Path, config: Path, port: int, *, unpaused: bool) -> dict[str, str]:
    """The environment of ``make airflow`` on ``port``.

    Every component is told the port, not only the API server: Airflow 3's task runners
    call the execution API at ``{AIRFLOW__API__BASE_URL}/execution/`` and fall back to
    ``http://localhost:8080`` without it, so on any other port every task failed.
    DAGs new to this Airflow home start **paused** unless ``unpaused``: starting the UI
    must not start training by itself (its Asset-or-time schedule would run at once).
    """
    base = f"http://127.0.0.1:{port}"
    return {
        **airflow_env(home, config),
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": base,
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{base}/execution/",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False" if unpaused else "True",
        # LocalExecutor forks this many workers (default 32): too many for a laptop.
        "AIRFLOW__CORE__PARALLELISM": str(min(8, max(2, os.cpu_count() or 2))),
    }


def standalone(settings: Settings, port: int = 8080, *, unpaused: bool = False) -> int:
    """``airflow standalone`` on loopback with Vigil's DAGs and config; returns its exit code."""
    home = home_of(settings)
    migrate(home, settings)
    config = write_config(settings, home / "vigil.yaml")
    env = standalone_env(home, config, port, unpaused=unpaused)
    print(f"Airflow UI: http://127.0.0.1:{port} (no login: simple auth manager, all admins)")
    if not unpaused:
        print("New DAGs start paused: unpause them in the UI (or `make airflow UNPAUSED=1`)")
    print(
        f"DAGs: {REPO_ROOT / 'dags'}; Airflow home: {home};"
        f" metadata DB: {mask_url(home_metadata_url(home))}; Ctrl-C or `make down` stops it"
    )
    # Its own process group, so stopping it stops the scheduler's forked workers too.
    proc = subprocess.Popen([AIRFLOW, "standalone"], env=env, start_new_session=True)
    pidfile = home / "standalone.pid"
    pidfile.write_text(str(proc.pid))
    try:
        return proc.wait()
    except KeyboardInterrupt:
        stop(settings)
        return 130
    finally:
        pidfile.unlink(missing_ok=True)


def stop(settings: Settings, timeout_s: float = 30.0) -> bool:
    """Stop a ``make airflow`` standalone and every process it started; False if none ran."""
    home = home_of(settings)
    pidfile = home / "standalone.pid"
    if not pidfile.exists():
        return False
    pgid = int(pidfile.read_text())
    try:
        return _stop_group(pgid, pidfile, timeout_s)
    finally:
        _sweep(home)


def _sweep(home: Path) -> None:
    """Task processes start their own sessions: stop any left on this Airflow home."""
    import psutil

    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if "airflow" in " ".join(proc.info["cmdline"] or []) and (
                proc.environ().get("AIRFLOW_HOME") == str(home)
            ):
                proc.terminate()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue


def _stop_group(pgid: int, pidfile: Path, timeout_s: float) -> bool:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                pidfile.unlink(missing_ok=True)
                return True
            time.sleep(0.5)
    pidfile.unlink(missing_ok=True)
    return True


if __name__ == "__main__":
    from stack.localstack import up
    from stack.settings import load_settings

    s = load_settings()
    if sys.argv[1:] == ["stop"]:
        print("airflow stopped" if stop(s) else "airflow was not running")
        raise SystemExit(0)
    up(s)
    raise SystemExit(
        standalone(
            s,
            int(os.environ.get("AIRFLOW_PORT", "8080")),
            unpaused=os.environ.get("AIRFLOW_UNPAUSED", "") not in ("", "0"),
        )
    )
