"""The scorer's PostgreSQL: predictions, alerts, dead letters and stay facts, stored once.

Everything a batch produces is stored in one transaction, keyed so that a redelivered
batch stores nothing twice (``ON CONFLICT DO NOTHING``); predictions go through a
per-connection staging table by binary ``COPY``. PostgreSQL being away is waited out
(the scorer's ``postgres`` :class:`~stack.resilience.Outage`); rows it refuses (a data
error, a constraint) are isolated by event (:meth:`ScoringStore.store_isolated`).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import psycopg
import pyarrow as pa

from features.spec import FEATURE_SET_VERSION
from stack.db import connect, copy_table
from stack.kafka import Record
from stack.resilience import Outage, isolate
from stack.settings import Settings

log = logging.getLogger("vigil.scorer")

PREDICTION_COLUMNS = (
    "event_id", "role", "patient_id", "ts", "as_of", "status", "risk", "alert", "threshold",
    "model_name", "model_version", "kafka_ts", "scored_at",
)  # fmt: skip
NO_ROWS = pd.DataFrame()  # nothing of a kind to store
# Errors that are the rows' fault (a value PostgreSQL refuses, a constraint they break):
# isolated. Connection errors are outages: waited out.
POISON = (psycopg.DataError, psycopg.IntegrityError)
Dead = tuple[Record, str, str]  # a record, its reason, the detail


def is_outage(exc: BaseException) -> bool:
    """PostgreSQL away (refused, dropped, restarting): wait, do not isolate."""
    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)


def minute_ts(epoch_minute: int) -> datetime:
    return datetime.fromtimestamp(int(epoch_minute) * 60, UTC)


def epoch_minute(ts: datetime) -> int:
    return int(ts.timestamp()) // 60


NO_PREDICTIONS = pd.DataFrame(
    {"risk": [], "alert": [], "threshold": [], "model_name": [], "model_version": [], "role": []}
)


_UTC_NS = pd.DatetimeTZDtype("ns", "UTC")


def prediction_frame(
    vec: pd.DataFrame, p: pd.DataFrame, role: str, scored_at: datetime
) -> pd.DataFrame:
    """Stored rows of the predictions ``p`` (from ``ServiceClient.predict_columns``)."""
    if p.empty:
        return pd.DataFrame(columns=list(PREDICTION_COLUMNS))
    return pd.DataFrame(
        {
            "event_id": vec["event_id"].to_numpy(),
            "role": role,
            "patient_id": vec["patient_id"].to_numpy(),
            "ts": vec["ts"].array,  # .array keeps the time zone; .to_numpy() boxes each time
            "as_of": vec["as_of"].array,
            "status": "scored",
            "risk": p["risk"].to_numpy(dtype=float),
            "alert": p["alert"].to_numpy(dtype=bool),
            "threshold": p["threshold"].to_numpy(dtype=float),
            "model_name": p["model_name"].to_numpy(),
            "model_version": p["model_version"].astype(str).to_numpy(),
            "kafka_ts": vec["_kafka_ts"].array,
            "scored_at": scored_at,
        }
    )


def status_frame(rows: pd.DataFrame, scored_at: datetime) -> pd.DataFrame:
    if rows.empty:
        return pd.DataFrame(columns=list(PREDICTION_COLUMNS))
    return pd.DataFrame(
        {
            "event_id": rows["event_id"].to_numpy(),
            "role": "champion",
            "patient_id": rows["patient_id"].to_numpy(),
            "ts": rows["ts"].array,
            "as_of": pd.array([pd.NaT] * len(rows), dtype=_UTC_NS),
            "status": rows["status"].to_numpy(),
            "risk": np.nan,
            "alert": pd.array([None] * len(rows), dtype="boolean"),
            "threshold": np.nan,
            "model_name": None,
            "model_version": None,
            "kafka_ts": rows["_kafka_ts"].array,
            "scored_at": scored_at,
        }
    )


_ARROW = pa.schema(
    [
        ("event_id", pa.string()), ("role", pa.string()), ("patient_id", pa.string()),
        ("ts", pa.timestamp("us", tz="UTC")), ("as_of", pa.timestamp("us", tz="UTC")),
        ("status", pa.string()), ("risk", pa.float64()), ("alert", pa.bool_()),
        ("threshold", pa.float64()), ("model_name", pa.string()), ("model_version", pa.string()),
        ("kafka_ts", pa.timestamp("us", tz="UTC")), ("scored_at", pa.timestamp("us", tz="UTC")),
    ]
)  # fmt: skip


def arrow_predictions(table: pd.DataFrame) -> pa.Table:
    """The stored columns, typed by :data:`_ARROW` (NaN, NaT and None become nulls)."""
    return pa.table(
        {f.name: pa.array(table[f.name], type=f.type, from_pandas=True) for f in _ARROW},
        schema=_ARROW,
    )


class ScoringStore:
    """The scorer's tables, on one kept connection.

    Args:
        settings: where PostgreSQL is.
        outage: waits out PostgreSQL's outages (the scorer's, for its gauge and counts).
    """

    def __init__(self, settings: Settings, outage: Outage) -> None:
        self.settings = settings
        self.outage = outage
        self._conn: psycopg.Connection[Any] | None = None

    def _wait(self, fn: Callable[[], Any]) -> Any:
        return self.outage.call(fn, retry_on=is_outage)

    def alert_history(self) -> list[tuple[str, datetime, float]]:
        """Each patient's last alert: (patient, time, risk), for the alert policy."""

        def read() -> list[Any]:
            with connect(self.settings) as conn:
                return conn.execute(
                    "SELECT DISTINCT ON (patient_id) patient_id, ts, risk FROM alerts "
                    "ORDER BY patient_id, ts DESC"
                ).fetchall()

        return [(p, ts, float(r)) for p, ts, r in self._wait(read)]

    def stays(self, patient_ids: list[str]) -> pd.DataFrame:
        """The stored stay facts (``stay_baselines``) of these patients."""

        def read() -> list[Any]:
            with self._transaction() as conn:
                return conn.execute(
                    "SELECT patient_id, first_minute, base_n, base_s FROM stay_baselines "
                    "WHERE feature_set = %s AND patient_id = ANY(%s)",
                    (FEATURE_SET_VERSION, patient_ids),
                ).fetchall()

        rows = self._wait(read)
        return pd.DataFrame(
            [(p, epoch_minute(f), np.array(n), np.array(s)) for p, f, n, s in rows],
            columns=["patient_id", "first_minute", "base_n", "base_s"],
        )

    def already_stored(self, event_ids: list[str]) -> set[str]:
        """Of these events, those whose champion prediction an earlier delivery stored."""
        if not event_ids:
            return set()

        def read() -> list[Any]:
            with self._transaction() as conn:
                return conn.execute(
                    "SELECT event_id FROM predictions WHERE role = 'champion' "
                    "AND event_id = ANY(%s)",
                    (event_ids,),
                ).fetchall()

        return {r[0] for r in self._wait(read)}

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[psycopg.Connection[Any]]:
        """A transaction on the kept connection; a database error closes it (reopened by
        the next batch, after the restart if the error ends the run)."""
        conn = self._db()
        try:
            with conn.transaction():
                yield conn
        except psycopg.Error:
            self.close()
            raise

    def store(
        self,
        table: pd.DataFrame,
        raised: pd.DataFrame,
        dead: list[Dead],
        seen_at: datetime,
        stays: pd.DataFrame | None = None,
    ) -> set[str]:
        """Insert predictions, alerts, dead letters and final stay facts idempotently;
        returns new alert ids."""
        with self._transaction() as conn:
            if stays is not None and len(stays):
                with conn.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO stay_baselines VALUES (%s, %s, %s, %s, %s, %s) "
                        "ON CONFLICT DO NOTHING",
                        [
                            (pid, FEATURE_SET_VERSION, minute_ts(first), n.tolist(),
                             s.tolist(), seen_at)
                            for pid, first, n, s in stays.itertuples(index=False)
                        ],
                    )  # fmt: skip
            if len(table):
                copy_table(conn, "_p", arrow_predictions(table), binary=True)
                conn.execute("INSERT INTO predictions SELECT * FROM _p ON CONFLICT DO NOTHING")
            new: set[str] = set()
            if len(raised):
                with conn.cursor() as cur:
                    for _, a in raised.iterrows():
                        cur.execute(
                            "INSERT INTO alerts (event_id, patient_id, ts, risk, threshold, "
                            "reason, model_name, model_version, top_features, raised_at) "
                            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
                            "ON CONFLICT DO NOTHING RETURNING event_id",
                            (
                                a["event_id"], a["patient_id"], a["ts"], float(a["risk"]),
                                float(a["threshold"]), a["reason"], a["model_name"],
                                a["model_version"], json.dumps(a["top_features"]), seen_at,
                            ),
                        )  # fmt: skip
                        row = cur.fetchone()
                        if row is not None:
                            new.add(row[0])
            if dead:
                with conn.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO scoring_dead_letters "
                        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                        [
                            (
                                r.topic,
                                r.partition,
                                r.offset,
                                reason,
                                detail,
                                r.key,
                                r.value,
                                seen_at,
                            )
                            for r, reason, detail in dead
                        ],
                    )
        return new

    def store_isolated(
        self,
        table: pd.DataFrame,
        raised: pd.DataFrame,
        dead: list[Dead],
        seen_at: datetime,
        stays: pd.DataFrame,
    ) -> tuple[set[str], list[str]]:
        """:meth:`_store`, waiting out PostgreSQL outages; rows it refuses (a data error,
        a constraint) are isolated by event, and the rest stored.

        Returns:
            The new alerts' ids, and the events whose rows PostgreSQL refused.
        """
        try:
            return self._wait(lambda: self.store(table, raised, dead, seen_at, stays)), []
        except POISON as exc:
            log.error("PostgreSQL refused a batch, isolating the events: %s", type(exc).__name__)
        # The batch's own records first (dead letters, stay facts), then event by event.
        self._wait(lambda: self.store(NO_ROWS, NO_ROWS, dead, seen_at, stays))
        ids = table["event_id"].unique().tolist() if len(table) else []

        def attempt(part: list[int]) -> set[str]:
            chosen = {ids[i] for i in part}
            rows = table[table["event_id"].isin(chosen)]
            alerts = raised[raised["event_id"].isin(chosen)] if len(raised) else raised
            stored: set[str] = self._wait(lambda: self.store(rows, alerts, [], seen_at))
            return stored

        iso = isolate(range(len(ids)), attempt, poison=lambda e: isinstance(e, POISON))
        new = set().union(*(alerts for _part, alerts in iso.done))
        return new, [ids[i] for i, _exc in iso.failed]

    def _db(self) -> psycopg.Connection[Any]:
        """The scorer's database connection, kept open across batches (with ``_p``, the
        staging table of each batch's predictions, emptied at every commit)."""
        if self._conn is None or self._conn.closed:
            conn = connect(self.settings)
            conn.execute(
                "CREATE TEMP TABLE _p (LIKE predictions INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
            )
            conn.commit()
            self._conn = conn
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
