"""PostgreSQL: connections, the schema declared in code (versioned migrations), bulk COPY.

The schema is a list of numbered migrations applied in order and recorded in
``schema_migrations``; applying is idempotent and serialised by an advisory lock, so any
stage may call :func:`migrate` before it writes.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime

import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv
from psycopg import sql
from psycopg.copy import QueuedLibpqWriter

from stack.localstack import endpoints
from stack.pgbinary import binary_copy_blocks
from stack.settings import Settings

MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        "ETL: per-minute vitals, quarantine, partition tracking, run summaries",
        """
        CREATE TABLE vitals_minute (
            patient_id      text        NOT NULL,
            minute          timestamptz NOT NULL,
            heart_rate      double precision,
            systolic_bp     double precision,
            diastolic_bp    double precision,
            spo2            double precision,
            resp_rate       double precision,
            temperature     double precision,
            consciousness   char(1) CHECK (consciousness IN ('A', 'C', 'V', 'P', 'U')),
            on_oxygen       boolean,
            n_heart_rate    smallint NOT NULL,
            n_systolic_bp   smallint NOT NULL,
            n_diastolic_bp  smallint NOT NULL,
            n_spo2          smallint NOT NULL,
            n_resp_rate     smallint NOT NULL,
            n_temperature   smallint NOT NULL,
            n_consciousness smallint NOT NULL,
            n_events        smallint NOT NULL,
            partition       text     NOT NULL,
            PRIMARY KEY (patient_id, minute)
        );
        CREATE INDEX vitals_minute_partition ON vitals_minute (partition);
        CREATE TABLE quarantine (
            run_id     text NOT NULL,
            partition  text NOT NULL,
            event_id   text NOT NULL,
            patient_id text,
            ts         timestamptz,
            scope      text NOT NULL CHECK (scope IN ('row', 'value')),
            field      text,
            raw_value  text,
            reason     text NOT NULL
        );
        CREATE INDEX quarantine_partition ON quarantine (partition);
        CREATE TABLE etl_partitions (
            partition        text PRIMARY KEY,
            fingerprint      text        NOT NULL,
            run_id           text        NOT NULL,
            processed_at     timestamptz NOT NULL,
            raw_rows         bigint NOT NULL,
            source_rows      bigint NOT NULL,
            quarantined_rows bigint NOT NULL,
            duplicates       bigint NOT NULL,
            corrected_values bigint NOT NULL,
            rejected_values  bigint NOT NULL,
            minute_rows      bigint NOT NULL,
            CHECK (raw_rows = source_rows + quarantined_rows + duplicates)
        );
        CREATE TABLE etl_runs (
            run_id       text PRIMARY KEY,
            started_at   timestamptz NOT NULL,
            finished_at  timestamptz,
            status       text NOT NULL,
            partitions   text[] NOT NULL DEFAULT '{}',
            raw_rows     bigint,
            source_rows  bigint,
            quarantined_rows bigint,
            duplicates   bigint,
            minute_rows  bigint,
            raw_validation_success       boolean,
            processed_validation_success boolean,
            report_dir   text,
            error        text,
            seconds      double precision
        );
        """,
    ),
    (
        2,
        "Features: partition tracking per feature-set version, run summaries, labels",
        """
        CREATE TABLE feature_partitions (
            partition           text NOT NULL,
            feature_set_version text NOT NULL,
            run_id              text NOT NULL,
            etl_processed_at    timestamptz,
            computed_at         timestamptz NOT NULL,
            rows                bigint NOT NULL,
            PRIMARY KEY (partition, feature_set_version)
        );
        CREATE TABLE feature_runs (
            run_id               text PRIMARY KEY,
            feature_set_version  text NOT NULL,
            started_at           timestamptz NOT NULL,
            finished_at          timestamptz,
            status               text NOT NULL,
            partitions           text[] NOT NULL DEFAULT '{}',
            feature_rows         bigint,
            labelled             bigint,
            positive             bigint,
            censored             bigint,
            outcomes_fingerprint text,
            error                text,
            seconds              double precision
        );
        CREATE TABLE feature_labels (
            patient_id          text NOT NULL,
            ts                  timestamptz NOT NULL,
            label               smallint CHECK (label IN (0, 1)),
            label_status        text NOT NULL
                CHECK (label_status IN ('labelled', 'censored', 'after_outcome')),
            outcome_ts          timestamptz,
            outcome_kind        text,
            minutes_to_outcome  double precision,
            horizon_hours       double precision NOT NULL,
            feature_set_version text NOT NULL,
            PRIMARY KEY (feature_set_version, patient_id, ts)
        );
        """,
    ),
    (
        3,
        "Serving: predictions (champion and shadow), alerts, scorer dead letters",
        """
        CREATE TABLE predictions (
            event_id      text NOT NULL,
            role          text NOT NULL CHECK (role IN ('champion', 'shadow')),
            patient_id    text NOT NULL,
            ts            timestamptz NOT NULL,
            as_of         timestamptz,
            status        text NOT NULL CHECK (status IN ('scored', 'too_late', 'future')),
            risk          double precision,
            alert         boolean,
            threshold     double precision,
            model_name    text,
            model_version text,
            kafka_ts      timestamptz,
            scored_at     timestamptz NOT NULL,
            PRIMARY KEY (event_id, role)
        );
        CREATE INDEX predictions_patient_ts ON predictions (patient_id, ts);
        CREATE INDEX predictions_scored_at ON predictions (scored_at);
        CREATE TABLE alerts (
            event_id      text PRIMARY KEY,
            patient_id    text NOT NULL,
            ts            timestamptz NOT NULL,
            risk          double precision NOT NULL,
            threshold     double precision NOT NULL,
            reason        text NOT NULL,
            model_name    text NOT NULL,
            model_version text NOT NULL,
            top_features  jsonb NOT NULL,
            raised_at     timestamptz NOT NULL
        );
        CREATE INDEX alerts_patient_ts ON alerts (patient_id, ts);
        CREATE TABLE scoring_dead_letters (
            kafka_topic     text NOT NULL,
            kafka_partition int NOT NULL,
            kafka_offset    bigint NOT NULL,
            reason          text NOT NULL,
            detail          text NOT NULL,
            key             bytea,
            value           bytea,
            seen_at         timestamptz NOT NULL,
            PRIMARY KEY (kafka_topic, kafka_partition, kafka_offset)
        );
        """,
    ),
    (
        4,
        "Monitoring: one summary row per drift/performance run; retraining triggers",
        """
        CREATE TABLE monitoring_runs (
            run_id                 text PRIMARY KEY,
            model_name             text NOT NULL,
            model_version          text NOT NULL,
            window_start           timestamptz NOT NULL,
            window_end             timestamptz NOT NULL,
            reference_rows         bigint NOT NULL,
            current_rows           bigint NOT NULL,
            tested_columns         int NOT NULL,
            drifted_columns        text[] NOT NULL,
            drift_share            double precision NOT NULL,
            prediction_drift_score double precision,
            prediction_drifted     boolean,
            prediction_source      text,
            realized               jsonb NOT NULL,
            backtest               jsonb NOT NULL,
            triggered              boolean NOT NULL,
            reasons                text[] NOT NULL,
            report_dir             text NOT NULL,
            created_at             timestamptz NOT NULL
        );
        CREATE TABLE retraining_triggers (
            trigger_id         bigserial PRIMARY KEY,
            monitoring_run_id  text NOT NULL REFERENCES monitoring_runs (run_id),
            model_name         text NOT NULL,
            model_version      text NOT NULL,
            reasons            text[] NOT NULL,
            status             text NOT NULL
                CHECK (status IN ('pending', 'skipped', 'training', 'promoted', 'rejected',
                                  'failed')),
            detail             text,
            training_run_id    text,
            new_version        text,
            created_at         timestamptz NOT NULL,
            updated_at         timestamptz NOT NULL
        );
        """,
    ),
    (
        5,
        "ETL: vitals_minute partitioned by the hour of its minute (hours load into fresh"
        " tables, indexed once and swapped in)",
        """
        ALTER TABLE vitals_minute RENAME TO vitals_minute_unpartitioned;
        ALTER TABLE vitals_minute_unpartitioned
            RENAME CONSTRAINT vitals_minute_pkey TO vitals_minute_unpartitioned_pkey;
        DROP INDEX vitals_minute_partition;
        CREATE TABLE vitals_minute (LIKE vitals_minute_unpartitioned INCLUDING ALL)
            PARTITION BY RANGE (minute);
        DO $$
        DECLARE h timestamp;
        BEGIN
            FOR h IN SELECT DISTINCT date_trunc('hour', minute AT TIME ZONE 'UTC')
                     FROM vitals_minute_unpartitioned LOOP
                EXECUTE format(
                    'CREATE TABLE %I PARTITION OF vitals_minute FOR VALUES FROM (%L) TO (%L)',
                    'vitals_minute_' || to_char(h, 'YYYYMMDD"_"HH24'),
                    h AT TIME ZONE 'UTC', (h + interval '1 hour') AT TIME ZONE 'UTC');
            END LOOP;
        END $$;
        INSERT INTO vitals_minute SELECT * FROM vitals_minute_unpartitioned;
        DROP TABLE vitals_minute_unpartitioned;
        """,
    ),
    (
        6,
        "Serving: stay facts (first usable minute, first-hours sums) the scorer restores"
        " after replaying recent history",
        """
        CREATE TABLE stay_baselines (
            patient_id   text        NOT NULL,
            feature_set  text        NOT NULL,
            first_minute timestamptz NOT NULL,
            base_n       bigint[]    NOT NULL,
            base_s       bigint[]    NOT NULL,
            stored_at    timestamptz NOT NULL,
            PRIMARY KEY (patient_id, feature_set)
        );
        COMMENT ON TABLE stay_baselines IS
            'features.online.OnlineFeatures.stay_facts: per stay, once its first hours are'
            ' final; base_n/base_s per vital in features.spec.STAT_VITALS order (counts,'
            ' sums of values on the 0.01 grid)';
        """,
    ),
]


def connect(settings: Settings, *, autocommit: bool = False) -> psycopg.Connection[tuple]:  # type: ignore[type-arg]
    """A connection to the configured (or embedded) database."""
    return psycopg.connect(endpoints(settings).database_url, autocommit=autocommit)


def _on_server(server_url: str, database: str) -> str:
    """The URL of ``database`` on the server of ``server_url``."""
    return server_url.rsplit("/", 1)[0] + f"/{database}"


def drop_database(server_url: str, name: str, *, wait_s: float = 30.0) -> None:
    """Drop database ``name`` (if it exists) on the server of ``server_url``.

    ``WITH (FORCE)`` ends the sessions of our own role, but a role that is not a
    superuser may not end the server's own workers: an autovacuum worker that has just
    started on a freshly loaded database makes it fail with "permission denied to
    terminate process". A plain ``DROP DATABASE`` cancels autovacuum by itself, so that
    is the fallback; a session of another role still connected is waited out up to
    ``wait_s``, then reported by name.
    """
    admin = _on_server(server_url, "postgres")
    db = sql.Identifier(name)
    deadline = time.monotonic() + wait_s
    with psycopg.connect(admin, autocommit=True) as conn:
        while True:
            try:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(db))
                return
            except psycopg.errors.InsufficientPrivilege:
                pass
            try:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(db))
                return
            except psycopg.errors.ObjectInUse as e:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"database {name!r} still has sessions of another role after"
                        f" {wait_s:.0f} s; end them (pg_terminate_backend) and drop it"
                    ) from e
            time.sleep(0.2)


def ensure_database(server_url: str, name: str) -> str:
    """Database ``name`` on the server of ``server_url``, created if missing (the role
    needs CREATEDB for that: on a hospital's server, ask its DBA); returns its URL."""
    admin = _on_server(server_url, "postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
        if found.fetchone() is None:
            try:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            except psycopg.errors.InsufficientPrivilege as e:
                raise RuntimeError(
                    f"database {name!r} does not exist and this role may not create it:"
                    f" ask the server's administrator to create it, owned by this role"
                ) from e
    return _on_server(server_url, name)


def recreate_database(server_url: str, name: str) -> str:
    """A new, empty database ``name`` (dropped first if it exists); returns its URL."""
    drop_database(server_url, name)
    admin = _on_server(server_url, "postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return _on_server(server_url, name)


def migrate(settings: Settings) -> list[int]:
    """Apply pending migrations in order; returns the versions applied now."""
    applied_now: list[int] = []
    with connect(settings) as conn:
        conn.execute("SELECT pg_advisory_xact_lock(74234)")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version int PRIMARY KEY, description text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations").fetchall()}
        for version, description, sql in MIGRATIONS:
            if version in done:
                continue
            conn.execute(sql)
            conn.execute(
                "INSERT INTO schema_migrations (version, description) VALUES (%s, %s)",
                (version, description),
            )
            applied_now.append(version)
    return applied_now


@contextmanager
def transaction(settings: Settings) -> Iterator[psycopg.Connection[tuple]]:  # type: ignore[type-arg]
    """A connection whose work commits on success and rolls back on error."""
    with connect(settings) as conn, conn.transaction():
        yield conn


def load_partitions(
    settings: Settings,
    partitions: list[str],
    load: Callable[[psycopg.Connection[tuple], str], None],  # type: ignore[type-arg]
) -> None:
    """``load(conn, partition)`` for each partition, each in its own transaction, on
    ``postgres.load_connections`` connections at once (the server parses each ``COPY`` on
    one core; two streams keep two busy). The first failure is raised once the loads
    already started have finished; every partition that committed stays committed.
    """

    def one(q: str) -> None:
        with transaction(settings) as conn:
            load(conn, q)

    with ThreadPoolExecutor(settings.postgres.load_connections, "pg-load") as pool:
        list(pool.map(one, partitions))


def copy_table(
    conn: psycopg.Connection[tuple],  # type: ignore[type-arg]
    table: str,
    data: pa.Table,
    *,
    binary: bool = False,
) -> int:
    """Bulk-load an Arrow table with ``COPY … FROM STDIN``; returns rows.

    Args:
        binary: send PostgreSQL's binary format (:mod:`stack.pgbinary`) instead of CSV.
            Faster for wide numeric tables, but every column's Arrow type must match its
            column's type exactly (the mapping is in :mod:`stack.pgbinary`): binary COPY
            does not cast. Use it where the table's DDL is generated from the same spec.
    """
    if data.num_rows == 0:
        return 0
    cols = ", ".join(f'"{c}"' for c in data.column_names)
    fmt = "binary" if binary else "csv"
    with (
        conn.cursor() as cur,
        cur.copy(
            f"COPY {table} ({cols}) FROM STDIN WITH (FORMAT {fmt})",
            writer=QueuedLibpqWriter(cur),  # sends from its own thread
        ) as cp,
    ):
        # Block by block, so the server parses one block while the next is built (the
        # encoders release the GIL): client and server overlap instead of taking turns.
        for block in binary_copy_blocks(data) if binary else _csv_blocks(data):
            cp.write(block)
    return int(data.num_rows)


def replace_range_partition(
    conn: psycopg.Connection[tuple],  # type: ignore[type-arg]
    parent: str,
    child: str,
    bounds: tuple[datetime, datetime],
    data: pa.Table,
    key: tuple[str, ...],
    *,
    constants: Mapping[str, object] | None = None,
    binary: bool = True,
) -> int:
    """Replace the partition ``[lo, hi)`` of a table partitioned by range, in the caller's
    transaction; returns rows.

    ``constants`` are columns with one value for the whole partition: they are not in
    ``data`` but the new table's defaults, so ``COPY`` neither sends nor parses them (for
    the hour name of 10M minute rows, 1.5 s of 16).

    The rows are copied into a fresh table, then indexed once (``key`` is its primary
    key, the parent's), then swapped in: the old partition dropped, the new one renamed
    and attached. Building an index once over loaded rows is about twice as fast as
    inserting every row into a live one (10M minute rows: 16 s against 30 s). The new
    table is created with the partition's range as a ``CHECK``, so attaching it needs no
    scan, and with the parent's columns and ``CHECK`` constraints read from the catalog
    (which takes no lock on the parent). The parent is locked only by the swap at the end,
    so loads of different partitions in parallel transactions queue there briefly and
    never deadlock. Readers see the old partition until the caller commits.
    """
    lo, hi = bounds
    with conn.cursor() as cur:
        cols = cur.execute(
            """
            SELECT attname, format('%%I %%s%%s', attname, format_type(atttypid, atttypmod),
                                   CASE WHEN attnotnull THEN ' NOT NULL' ELSE '' END)
            FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0
                AND NOT attisdropped ORDER BY attnum
            """,
            (parent,),
        ).fetchall()
        checks = cur.execute(
            "SELECT format('CONSTRAINT %%I %%s', conname, pg_get_constraintdef(oid))"
            " FROM pg_constraint"
            " WHERE conrelid = %s::regclass AND contype = 'c'",
            (parent,),
        ).fetchall()
    constants = dict(constants or {})
    unknown = set(constants) - {c[0] for c in cols}
    if unknown or set(constants) & set(data.column_names):
        raise ValueError(
            f"{parent}: constants {sorted(constants)} must be columns of the table and not"
            f" of the data (unknown: {sorted(unknown)})"
        )
    new = sql.Identifier(f"{child}_new")
    column = sql.Identifier(_range_column(conn, parent))
    ddl: list[sql.Composable] = [
        sql.SQL(d) + sql.SQL(" DEFAULT ") + sql.Literal(constants[name])
        if name in constants
        else sql.SQL(d)
        for name, d in cols
    ]
    ddl += [sql.SQL(c[0]) for c in checks]
    ddl.append(
        sql.SQL("CONSTRAINT {} CHECK ({} >= {} AND {} < {})").format(
            sql.Identifier(f"{child}_range"), column, sql.Literal(lo), column, sql.Literal(hi)
        )
    )
    conn.execute(sql.SQL("CREATE TABLE {} ({})").format(new, sql.SQL(", ").join(ddl)))
    rows = copy_table(conn, f'"{child}_new"', data, binary=binary)
    conn.execute(
        sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} PRIMARY KEY ({})").format(
            new,
            sql.Identifier(f"{child}_pkey_new"),
            sql.SQL(", ").join(map(sql.Identifier, key)),
        )
    )
    # The swap: from here on the parent is locked until the caller commits.
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(child)))
    conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(new, sql.Identifier(child)))
    conn.execute(
        sql.SQL("ALTER INDEX {} RENAME TO {}").format(
            sql.Identifier(f"{child}_pkey_new"), sql.Identifier(f"{child}_pkey")
        )
    )
    conn.execute(
        sql.SQL("ALTER TABLE {} ATTACH PARTITION {} FOR VALUES FROM ({}) TO ({})").format(
            sql.Identifier(parent), sql.Identifier(child), sql.Literal(lo), sql.Literal(hi)
        )
    )
    return rows


def _range_column(conn: psycopg.Connection[tuple], parent: str) -> str:  # type: ignore[type-arg]
    """The column a table is partitioned by (one column, by range)."""
    row = conn.execute(
        """
        SELECT a.attname FROM pg_partitioned_table p
        JOIN pg_attribute a ON a.attrelid = p.partrelid AND a.attnum = p.partattrs[0]
        WHERE p.partrelid = %s::regclass AND p.partstrat = 'r' AND p.partnatts = 1
        """,
        (parent,),
    ).fetchone()
    if row is None:
        raise ValueError(f"{parent} is not partitioned by range on one column")
    return str(row[0])


def _csv_blocks(data: pa.Table) -> Iterator[memoryview]:
    options = pacsv.WriteOptions(include_header=False)
    step = max(1, (4 << 20) // max(1, data.nbytes // max(1, data.num_rows)))
    for start in range(0, data.num_rows, step):
        buf = io.BytesIO()
        pacsv.write_csv(data.slice(start, step), buf, write_options=options)
        yield buf.getbuffer()
