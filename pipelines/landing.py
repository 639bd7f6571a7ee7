"""Kafka → raw lake (``make ingest``): every offset lands exactly once, nothing is dropped.

Vitals, outcomes and admissions are validated against their contracts and written as Parquet,
partitioned by event date and hour (``raw/vitals/date=YYYY-MM-DD/hour=HH/``). Messages
that cannot be decoded or break the contract (``stack.contracts``: ids, event-time
window, bounded numbers included) go, with their original bytes and the reason, to
``raw/deadletter/`` — partitioned by the hour they *landed*, never by a value the
producer chose — and to the dead-letter topic. A Kafka timestamp outside
``KAFKA_TS_RANGE_MS`` is stored as null.

Hostile input and outages (``stack.resilience``): a validation step that fails on a poll
is retried on halves until the records it fails on are alone, and those become dead
letters (``internal_error``); the broker, the lake or the fetch process being away is
waited out with backoff — for ever when continuous, up to ``landing.outage_max_wait_s``
when bounded, then the run fails with the dependency named. Nothing is committed that
is not written, so a wait loses nothing.

Exactly once into the lake, across crashes, by a write-ahead journal per lander run:

1. write ``_landing/<group>/pending/<run>.json``: the files this flush will write and the
   offsets it will commit;
2. write the Parquet files (each atomically);
3. commit the offsets to Kafka;
4. delete the journal.

A journal left behind means a lander stopped between 1 and 4. Whoever next holds its
partitions settles it: offsets committed, the files stay; not committed (a crash between
1 and 3), its files are deleted and the same offsets are consumed again. A commit the group
refuses (it rebalanced under the flush) is taken back the same way by the lander itself.
The dead-letter *topic* is at-least-once (a crash after step 2 may resend); the lake is
the record.

Partitions (``landing.assignment``): ``all`` reads every partition of the three topics
(one lander at a time); ``group`` subscribes, so that the landers of a consumer group share
them. A group lander reads its partitions through the fetch process and uses its own
group consumer only to stay a member (its partitions paused); when the group moves a
partition away, the rows of it not yet committed are dropped (the new owner reads them
from the last commit); a partition gained starts from the group's commit once the journals
that touch it are settled. A run that lost touch with the group for longer than the
group allows (``GROUP_SILENCE_SHARE`` of ``kafka.consumer.max_poll_interval_ms``) may have
been replaced: a flush written across such a silence is taken back, not committed (its new
owner may have settled its journal already), and the run starts again from the group's
commits. No instance commits a partition it does not hold, so each offset lands
once whichever instance lands it.

Modes: ``bounded`` drains up to the end offsets seen at start, then exits (what Airflow
schedules); ``continuous`` runs until SIGINT/SIGTERM, flushing on size or time.

Kafka is read by a fetch process (``stack.kafkafetch``, ``landing.fetch: process``) a few
polls ahead of this one, so that decoding record batches and validating and writing them
use both cores. It only reads, from the offsets this process gives it: the journal, the
commits and the group's offsets stay here, so the guarantees above do not depend on it.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import FrameType
from typing import Any, NamedTuple, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
import typer

from stack.batchvalidate import BatchValidator, arrow_schema, validate_isolated
from stack.catalog import (
    LANDING_STATE,
    RAW_ADMISSIONS,
    RAW_DEAD,
    RAW_OUTCOMES,
    RAW_VITALS,
    by_hour,
    landing_journal,
    landing_journals,
    landing_run,
)
from stack.consume import ConsumeLoop, Offsets, Polled
from stack.contracts import (
    AdmissionEvent,
    OutcomeEvent,
    VitalsEvent,
)
from stack.gctune import throughput_gc
from stack.kafka import (
    Consumer,
    KafkaClient,
    PartitionBatch,
    Producer,
    Record,
    TopicPartition,
    is_broker_outage,
)
from stack.kafkafetch import (
    Fetcher,
    FetchError,
    InlineFetcher,
    ProcessFetcher,
    RestartingFetcher,
)
from stack.lake import Lake
from stack.localstack import endpoints, ensure_topics
from stack.logs import configure_logging
from stack.memory import peak_rss_mb
from stack.metrics import record_stage
from stack.resilience import Outage
from stack.settings import Settings, load_settings

log = logging.getLogger("vigil.landing")
_T = TypeVar("_T")

POLL_TIMEOUT_S = 0.2  # how long one poll waits for data (the loop's tick when idle)
MEMBERSHIP_EVERY_S = 0.5  # a group lander hears from its group this often
# A member that has not polled for kafka.consumer.max_poll_interval_ms is replaced. Silent
# for this share of it, a lander takes nothing it holds for granted.
GROUP_SILENCE_SHARE = 0.8
# Failpoints for tests: "landing.after_write:N" → die after the N-th flush's files;
# "landing.stall_after_write:N:S" → stand still S seconds there (once).
FAILPOINT_ENV = "VIGIL_FAILPOINT"

_TS = pa.timestamp("us", tz="UTC")
_KAFKA_COLS = [
    ("kafka_topic", pa.string()),
    ("kafka_partition", pa.int32()),
    ("kafka_offset", pa.int64()),
    ("kafka_ts", _TS),
    ("landed_at", _TS),
]
VITALS_SCHEMA = pa.schema([*arrow_schema(VitalsEvent), *_KAFKA_COLS])
OUTCOMES_SCHEMA = pa.schema([*arrow_schema(OutcomeEvent), *_KAFKA_COLS])
ADMISSIONS_SCHEMA = pa.schema([*arrow_schema(AdmissionEvent), *_KAFKA_COLS])
DEAD_SCHEMA = pa.schema(
    [
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("key", pa.binary()),
        ("value", pa.binary()),
        *_KAFKA_COLS,
    ]
)


@dataclass
class LandingSummary:
    run_id: str
    mode: str
    records: int = 0
    vitals: int = 0
    outcomes: int = 0
    admissions: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)
    files: list[str] = field(default_factory=list)
    flushes: int = 0
    recovered_files: int = 0
    seconds: float = 0.0
    first_record_s: float | None = None  # startup: connect, offsets, first fetch
    committed: dict[str, int] = field(default_factory=dict)
    peak_rss_mb: float = 0.0
    outages: dict[str, int] = field(default_factory=dict)  # dependency -> outages waited out

    @property
    def rate(self) -> float:
        """Records per second over the whole run, startup included."""
        return self.records / self.seconds if self.seconds else 0.0

    @property
    def drain_rate(self) -> float:
        """Records per second from the first record on (the steady-state throughput)."""
        busy = self.seconds - (self.first_record_s or 0.0)
        return self.records / busy if busy > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "mode": self.mode,
            "records": self.records,
            "vitals": self.vitals,
            "outcomes": self.outcomes,
            "admissions": self.admissions,
            "dead_letters": dict(self.dead_letters),
            "files": len(self.files),
            "flushes": self.flushes,
            "recovered_files": self.recovered_files,
            "seconds": round(self.seconds, 3),
            "records_per_s": round(self.rate, 1),
            "drain_records_per_s": round(self.drain_rate, 1),
            "startup_s": round(self.first_record_s or 0.0, 3),
            "committed": self.committed,
            "peak_rss_mb": round(self.peak_rss_mb, 1),
            "outages": self.outages,
        }


class _Buffer:
    """One flush worth of validated rows (Arrow tables) and dead letters."""

    def __init__(self) -> None:
        self.vitals: list[pa.Table] = []
        self.outcomes: list[pa.Table] = []
        self.admissions: list[pa.Table] = []
        self.dead: list[_Dead] = []
        self.last_offsets: dict[tuple[str, int], int] = {}
        self.count = 0

    def drop(self, partitions: set[tuple[str, int]]) -> int:
        """Forget what came from ``partitions`` (topic, partition); returns how many
        records that was."""
        if not partitions:
            return 0
        before = self.count

        def keep(tables: list[pa.Table]) -> list[pa.Table]:
            out = []
            for table in tables:  # each holds one topic's rows (see with_kafka)
                topic = table.column("kafka_topic")[0].as_py() if table.num_rows else None
                gone = pa.array([p for (tp, p) in partitions if tp == topic], pa.int32())
                kept = table.filter(pc.invert(pc.is_in(table.column("kafka_partition"), gone)))
                if kept.num_rows:
                    out.append(kept)
            return out

        self.vitals, self.outcomes = keep(self.vitals), keep(self.outcomes)
        self.admissions = keep(self.admissions)
        self.dead = [d for d in self.dead if (d.topic, d.partition) not in partitions]
        for key in partitions:
            self.last_offsets.pop(key, None)
        self.count = sum(t.num_rows for t in (*self.vitals, *self.outcomes, *self.admissions))
        self.count += len(self.dead)
        return before - self.count

    @property
    def next_offsets(self) -> dict[TopicPartition, int]:
        return {TopicPartition(t, p): off + 1 for (t, p), off in self.last_offsets.items()}

    @staticmethod
    def with_kafka(rows: pa.Table, topic: str, kafka: Polled, schema: pa.Schema) -> pa.Table:
        """Validated rows plus the Kafka coordinates of the records they came from."""
        index = rows.column("_index").to_numpy()
        cols = {name: rows.column(name) for name in rows.column_names if name != "_index"}
        cols["kafka_topic"] = pa.repeat(pa.scalar(topic, pa.string()), len(index))
        cols["kafka_partition"] = pa.array(kafka.partitions[index], pa.int32())
        cols["kafka_offset"] = pa.array(kafka.offsets[index], pa.int64())
        ts = kafka.timestamps_ms[index]
        cols["kafka_ts"] = pa.array(ts * 1000, pa.int64(), mask=ts < 0).cast(_TS)
        cols["landed_at"] = pa.nulls(rows.num_rows, _TS)  # set at flush
        return pa.table(cols, schema=schema)

    def tables(self, landed_at: datetime) -> tuple[pa.Table, pa.Table, pa.Table, pa.Table]:
        stamp = pa.scalar(landed_at, _TS)

        def stamped(parts: list[pa.Table], schema: pa.Schema) -> pa.Table:
            t = pa.concat_tables(parts) if parts else schema.empty_table()
            i = t.schema.get_field_index("landed_at")
            return t.set_column(i, "landed_at", pa.repeat(stamp, t.num_rows))

        d = self.dead
        dead = {
            "reason": [x.reason for x in d],
            "detail": [x.detail for x in d],
            "key": [x.key for x in d],
            "value": [x.value for x in d],
            "kafka_topic": [x.topic for x in d],
            "kafka_partition": [x.partition for x in d],
            "kafka_offset": [x.offset for x in d],
            "kafka_ts": [x.timestamp_ms * 1000 if x.timestamp_ms >= 0 else None for x in d],
            "landed_at": [landed_at] * len(d),
        }
        return (
            stamped(self.vitals, VITALS_SCHEMA),
            stamped(self.outcomes, OUTCOMES_SCHEMA),
            stamped(self.admissions, ADMISSIONS_SCHEMA),
            pa.table(dead, schema=DEAD_SCHEMA),
        )


class _Dead(NamedTuple):
    """A message that goes to the dead letters, with where it came from and why."""

    reason: str
    detail: str
    key: bytes | None
    value: bytes | None
    topic: str
    partition: int
    offset: int
    timestamp_ms: int

    @classmethod
    def of(cls, r: Record, reason: str, detail: str) -> _Dead:
        return cls(reason, detail, r.key, r.value, r.topic, r.partition, r.offset, r.timestamp_ms)


def _fetch_failed(exc: BaseException) -> bool:
    return isinstance(exc, FetchError) or is_broker_outage(exc)


def land_rows(
    batches: list[PartitionBatch], validator: BatchValidator, schema: pa.Schema
) -> pa.Table:
    """The rows a lander writes for these records of one topic: the valid ones, with
    their Kafka coordinates (``landed_at`` null until a flush stamps it)."""
    polled = Polled(batches)
    result = validate_isolated(validator, polled.values)
    return _Buffer.with_kafka(result.table, batches[0].topic, polled, schema)


def _is_io_outage(exc: BaseException) -> bool:
    """The lake failing to write (a full disk, a vanished mount, S3 away): wait it out."""
    return isinstance(exc, OSError)


class Lander:
    """Drains the vitals, outcomes and admissions topics into the raw lake."""

    def __init__(self, settings: Settings, *, client: KafkaClient | None = None) -> None:
        self.settings = settings
        self.cfg = settings.landing
        self.topics = settings.kafka.topics
        self.client = client or KafkaClient(settings.kafka, endpoints(settings).bootstrap_servers)
        self.lake = Lake(settings.resolve(settings.lake.root))
        self.journal = ""  # this run's journal (set when the run starts)
        bounds = settings.contract.bounds()
        self._vitals = BatchValidator(VitalsEvent, bounds)
        self._outcomes = BatchValidator(OutcomeEvent, bounds)
        self._admissions = BatchValidator(AdmissionEvent, bounds)
        self._stop_event = threading.Event()
        self._dlq: Producer | None = None
        self._failpoint = self._parse_failpoint()
        self.outages: dict[str, Outage] = {}
        self._landing: _Landing | None = None

    def holding(self) -> set[TopicPartition]:
        """The partitions the running run reads now (empty when none runs)."""
        landing = self._landing
        return set(landing.position.copy()) if landing is not None else set()

    @staticmethod
    def _parse_failpoint() -> tuple[str, int, float] | None:
        """(``die`` or ``stall``, the flush, seconds) from :data:`FAILPOINT_ENV`."""
        raw = os.environ.get(FAILPOINT_ENV, "")
        if raw.startswith("landing.after_write:"):
            return "die", int(raw.split(":", 1)[1]), 0.0
        if raw.startswith("landing.stall_after_write:"):
            _, flush, seconds = raw.split(":")
            return "stall", int(flush), float(seconds)
        return None

    # ------------------------------------------------------------------ recovery
    def _journals(self) -> list[str]:
        """The journals other runs of this group left (this run's own is never settled)."""
        group = self.cfg.group_id
        found = self.lake.files(landing_journals(group), suffix=".json")
        legacy = f"{LANDING_STATE}/{group}/pending.json"  # one per group, before 2026-12
        if self.lake.exists(legacy):
            found.append(legacy)
        return [rel for rel in found if rel != self.journal]

    def _recover(
        self, consumer: Consumer, summary: LandingSummary, gained: set[TopicPartition] | None
    ) -> None:
        """Settle the journals that touch ``gained`` (None: every journal of the group).

        A flush whose offsets were committed keeps its files; one whose offsets were not
        loses them, and its records are read again from the last commit. (A commit is
        one request: were it ever half taken, the files stay — nothing is lost.)
        """
        for rel in self._journals():
            try:
                pending = self.lake.read_json(rel)
            except FileNotFoundError:
                continue  # settled meanwhile by its own run
            planned = {
                TopicPartition(t, int(p)): int(o)
                for t, parts in pending["offsets"].items()
                for p, o in parts.items()
            }
            if gained is not None and not set(planned) & gained:
                continue  # another member's: it settles it
            now = consumer.committed(list(planned))
            if not any((now[tp] or 0) >= off for tp, off in planned.items()):
                for f in pending["files"]:
                    self.lake.delete(f)
                summary.recovered_files += len(pending["files"])
                log.warning(
                    "recovered an interrupted flush: its files were removed and will be rewritten",
                    extra={"stage": "landing", "files": len(pending["files"])},
                )
            self.lake.delete(rel)

    # ------------------------------------------------------------------ flush
    def _outage(self, what: str, *, bounded: bool) -> Outage:
        """The waiter for one dependency (one per run, so its counts add up)."""
        if what not in self.outages:
            self.outages[what] = Outage(
                what,
                initial_s=self.cfg.backoff_initial_s,
                max_s=self.cfg.backoff_max_s,
                max_wait_s=self.cfg.outage_max_wait_s if bounded else None,
            )
        return self.outages[what]

    def _write(self, buf: _Buffer, summary: LandingSummary, *, bounded: bool) -> list[str]:
        """Make a flush durable: the journal, then the Parquet files (lake outages waited
        out), then the dead-letter topic. Returns the files; the commit is the loop's."""
        vitals, outcomes, admissions, dead = buf.tables(datetime.now(UTC))
        tables = {
            RAW_VITALS: by_hour(vitals, "ts"),
            RAW_OUTCOMES: by_hour(outcomes, "ts"),
            RAW_ADMISSIONS: by_hour(admissions, "ts"),
            # By the hour they landed: a dead letter's own times are not to be trusted.
            RAW_DEAD: by_hour(dead, "landed_at"),
        }
        name = f"part-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:12]}.parquet"
        plan = [
            (f"{zone}/{part}/{name}", t)
            for zone, parts in tables.items()
            for part, t in parts.items()
        ]
        offsets: dict[str, dict[str, int]] = {}
        for tp, off in buf.next_offsets.items():
            offsets.setdefault(tp.topic, {})[str(tp.partition)] = off

        def write() -> None:  # idempotent: the same journal, the same atomic files
            self.lake.write_json(
                {"files": [rel for rel, _ in plan], "offsets": offsets, "run_id": summary.run_id},
                self.journal,
            )
            for rel, table in plan:
                self.lake.write_parquet(table, rel)

        self._outage("lake", bounded=bounded).call(write, retry_on=_is_io_outage)
        summary.flushes += 1
        if self._failpoint is not None:
            kind, at, seconds = self._failpoint
            if kind == "die" and summary.flushes >= at:
                os._exit(17)  # simulated crash: files written, offsets not committed
            if kind == "stall" and summary.flushes == at:
                self._failpoint = None  # once (a flush taken back is counted again)
                time.sleep(seconds)  # simulated stall (a GC pause, a frozen VM, a slow disk)
        if self._dlq is not None and buf.dead:
            dlq = self._dlq
            self._outage("kafka", bounded=bounded).call(
                lambda: self._send_dead(dlq, buf.dead), retry_on=is_broker_outage
            )
        summary.vitals += vitals.num_rows
        summary.outcomes += outcomes.num_rows
        summary.admissions += admissions.num_rows
        return [rel for rel, _ in plan]

    def _send_dead(self, dlq: Producer, dead: list[_Dead]) -> None:
        """Every dead letter to the topic (all again after a failure: at least once)."""
        for d in dead:
            dlq.send(
                self.topics.dead_letters,
                d.value or b"",
                key=d.key,
                headers=[
                    ("reason", d.reason.encode()),
                    ("detail", d.detail.encode()),
                    ("source", f"{d.topic}/{d.partition}/{d.offset}".encode()),
                ],
            )
        dlq.flush()

    # ------------------------------------------------------------------ main loop
    def _take(self, polled: Polled, buf: _Buffer, summary: LandingSummary) -> int:
        """Validate a poll's records into the buffer, columnar (see ``stack.batchvalidate``).

        Returns:
            The number of records taken.
        """
        last = buf.last_offsets
        for b in polled.batches:
            last[b.topic, b.partition] = b.offsets[-1]
        for topic, records in polled.by_topic().items():
            if topic == self.topics.vitals:
                validator, schema, out = self._vitals, VITALS_SCHEMA, buf.vitals
            elif topic == self.topics.admissions:
                validator, schema, out = self._admissions, ADMISSIONS_SCHEMA, buf.admissions
            else:
                validator, schema, out = self._outcomes, OUTCOMES_SCHEMA, buf.outcomes
            result = validate_isolated(validator, records.values)
            if result.table.num_rows:
                out.append(_Buffer.with_kafka(result.table, topic, records, schema))
            buf.dead.extend(
                _Dead.of(records.record(i), reason, detail) for i, reason, detail in result.rejects
            )
        buf.count += len(polled)
        summary.records += len(polled)
        return len(polled)

    def _fetcher(self) -> Fetcher:
        """The configured way of reading Kafka (started early: a child connects meanwhile)."""
        args = (self.client, self.settings.kafka.consumer.max_poll_records, POLL_TIMEOUT_S)
        if self.cfg.fetch == "process":
            return ProcessFetcher(*args)
        return InlineFetcher(*args)

    def run(self, *, bounded: bool = True, max_seconds: float | None = None) -> LandingSummary:
        """Land messages; bounded mode stops at the end offsets seen at start.

        Args:
            bounded: drain and exit (Airflow) rather than run until stopped.
            max_seconds: stop (after a final flush) once this much time has passed.

        Raises:
            OutageError: bounded, and the broker or the lake stayed away longer than
                ``landing.outage_max_wait_s`` (nothing was committed that is not written).
        """
        summary = LandingSummary(
            run_id=uuid.uuid4().hex[:12], mode="bounded" if bounded else "continuous"
        )
        t0 = time.monotonic()
        self.outages = {}
        self.journal = landing_journal(self.cfg.group_id, summary.run_id)
        group = self.cfg.assignment == "group"
        # Reads only (this process owns the group's offsets); started first, so that a
        # fetch process starts up while this one finds out where to resume.
        fetch = RestartingFetcher(
            self._fetcher, self._outage("fetch", bounded=bounded), retry_on=_fetch_failed
        )
        consumer: Consumer | None = None
        self._dlq = None
        previous_handlers: dict[int, Any] = {}
        broker = self._outage("kafka", bounded=bounded)
        fetch.outage.stop = broker.stop = self._stop_event
        with throughput_gc():  # fewer GC passes over live batches
            try:
                for validator in (self._vitals, self._outcomes, self._admissions):
                    validator.warm_up()  # while the fetch process starts: both cores busy
                topics = [self.topics.vitals, self.topics.outcomes, self.topics.admissions]

                def connect() -> tuple[list[TopicPartition], Consumer]:
                    if not self.settings.kafka.bootstrap_servers:
                        ensure_topics(self.settings)  # the embedded broker forgets topics
                    consumer = self.client.consumer(self.cfg.group_id)
                    if group:
                        consumer.subscribe(topics)  # the group says which partitions
                        return [], consumer
                    return self.client.all_partitions(topics), consumer

                partitions, consumer = broker.call(connect, retry_on=is_broker_outage)
                self._dlq = self.client.producer() if self.cfg.dead_letters_to_topic else None
                landing = self._landing = _Landing(
                    self, consumer, fetch, summary, t0, bounded=bounded
                )
                if group:
                    landing.join(timeout_s=self.cfg.idle_timeout_s + 30.0)
                else:
                    landing.gain(set(partitions), every_journal=True)
                previous_handlers = self._install_signal_handlers()
                loop = ConsumeLoop(
                    poll=landing.poll, commit=consumer.commit, kafka=broker, stop=self._stop_event
                )
                ended = loop.run(
                    landing,
                    idle_timeout_s=self.cfg.idle_timeout_s if bounded else None,
                    max_seconds=max_seconds,
                    drained=_Drained(landing.position, landing.end) if bounded else None,
                )
                if ended == "idle":
                    position, end = landing.position, landing.end
                    log.warning(
                        "no data before reaching the end offsets; stopping",
                        extra={"stage": "landing", "lagging": {
                            f"{tp.topic}/{tp.partition}": end[tp] - position[tp]
                            for tp in end if position[tp] < end[tp]
                        }},
                    )  # fmt: skip
            finally:
                self._landing = None
                for sig, handler in previous_handlers.items():
                    signal.signal(sig, handler)
                fetch.close()
                summary.peak_rss_mb = peak_rss_mb() + fetch.peak_rss_mb()
                if consumer is not None:
                    consumer.close()
                if self._dlq is not None:
                    self._dlq.close()
        summary.seconds = time.monotonic() - t0
        summary.outages = {k: o.outages for k, o in self.outages.items() if o.outages}
        self.lake.write_json(summary.to_dict(), landing_run(self.cfg.group_id, summary.run_id))
        log.info("landing done", extra={"stage": "landing", **summary.to_dict()})
        record_stage(self.settings, "landing", seconds=summary.seconds)
        return summary

    def _install_signal_handlers(self) -> dict[int, Any]:
        """Stop gracefully (final flush) on SIGTERM/SIGINT; returns the handlers replaced."""

        def stop(_sig: int, _frame: FrameType | None) -> None:
            self._stop_event.set()  # ends the loop, and an outage's wait

        previous: dict[int, Any] = {}
        try:
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, stop)
        except ValueError:
            pass  # not the main thread (e.g. inside a test runner thread): no handlers
        return previous


class _Drained:
    """A bounded drain's end: every partition at the end offsets seen at start.

    Some brokers (Tansu) report the end of the last *batch* start, and a poll may leave
    part of a fetched batch buffered: one more poll takes what was already there, then
    the drain ends.
    """

    def __init__(self, position: dict[TopicPartition, int], end: dict[TopicPartition, int]):
        self.position, self.end = position, end
        self.caught_up = False

    def __call__(self) -> bool:
        if not all(self.position[tp] >= e for tp, e in self.end.items()):
            return False
        if self.caught_up:
            return True
        self.caught_up = True
        return False


class _Landing:
    """The lander as the consume loop's handler: polls are buffered, flushed (journal,
    files, dead letters) on size or time, committed by the loop, then the journal goes.

    It also keeps what this run holds: ``position`` (the next offset to read, per
    partition held) and ``end`` (a bounded run's goal), given once (``all``) or kept in
    step with the group (``group``: :meth:`poll` hears from the group first).
    """

    def __init__(
        self,
        lander: Lander,
        consumer: Consumer,
        fetch: RestartingFetcher,
        summary: LandingSummary,
        t0: float,
        *,
        bounded: bool,
    ) -> None:
        self.lander, self.consumer, self.fetch = lander, consumer, fetch
        self.summary, self.t0, self.bounded = summary, t0, bounded
        self.group = lander.cfg.assignment == "group"
        self.position: dict[TopicPartition, int] = {}
        self.end: dict[TopicPartition, int] = {}
        self.buf = _Buffer()
        self.last_flush = time.monotonic()
        self.files: list[str] = []
        self.heard_from_group = time.monotonic()
        poll_interval_s = lander.settings.kafka.consumer.max_poll_interval_ms / 1000
        self.silence_s = GROUP_SILENCE_SHARE * poll_interval_s

    # ------------------------------------------------------------ what this run holds
    def _kafka(self, fn: Callable[[], _T]) -> _T:
        return self.lander._outage("kafka", bounded=self.bounded).call(
            fn, retry_on=is_broker_outage
        )

    def gain(self, gained: set[TopicPartition], *, every_journal: bool = False) -> None:
        """Start reading ``gained``: journals touching them settled first, then from the
        group's committed offsets (or the earliest)."""
        c, parts = self.consumer, sorted(gained, key=lambda tp: (tp.topic, tp.partition))
        self._kafka(lambda: self.lander._recover(
            c, self.summary, None if every_journal else gained))  # fmt: skip
        marks = self._kafka(lambda: c.watermarks(parts))
        committed = self._kafka(lambda: c.committed(parts))
        for tp in parts:
            self.position[tp] = committed[tp] or marks[tp][0]
            self.end[tp] = marks[tp][1]
        self.fetch.restart(self.position)

    def lose(self, lost: set[TopicPartition]) -> None:
        """Stop reading ``lost``; what was taken from them and not committed is dropped
        (their new owner reads it again from the last commit)."""
        dropped = self.buf.drop({(tp.topic, tp.partition) for tp in lost})
        self.summary.records -= dropped
        for tp in lost:
            self.position.pop(tp, None)
            self.end.pop(tp, None)
        log.info(
            "partitions moved to another lander",
            extra={"stage": "landing", "partitions": len(lost), "dropped_records": dropped},
        )
        self.fetch.restart(self.position)

    def join(self, timeout_s: float) -> None:
        """Wait until the group has given this lander partitions (or ``timeout_s``: a
        group with more landers than partitions leaves some with none)."""
        deadline = time.monotonic() + timeout_s
        while not self.position and time.monotonic() < deadline:
            if self.lander._stop_event.is_set():
                return
            self._hear_from_group(POLL_TIMEOUT_S)

    def _hear_from_group(self, timeout_s: float = 0.0) -> None:
        """One poll of the group consumer (its partitions paused: it reads nothing), then
        follow the assignment it reports.

        A rebalance revokes every partition (eager): all that was not committed is
        dropped, and the lander polls the group until it has its new partitions (up to
        the session timeout), so that the rebalance completes for the whole group.
        """
        c = self.consumer
        silent = self._silent()
        self._kafka(lambda: c.poll_columns(1, timeout_s))  # the group protocol; data ignored
        if c.rebalancing():
            if self.position:
                self.lose(set(self.position))
            session_s = self.lander.settings.kafka.consumer.session_timeout_ms / 1000
            deadline = time.monotonic() + session_s
            while c.rebalancing() and time.monotonic() < deadline:
                if self.lander._stop_event.is_set():
                    return
                self._kafka(lambda: c.poll_columns(1, POLL_TIMEOUT_S))
        self.heard_from_group = time.monotonic()
        held = set() if c.rebalancing() else c.assignment()
        if held:
            c.pause(sorted(held, key=lambda tp: (tp.topic, tp.partition)))
        mine = set(self.position)
        if silent and mine:  # may have been replaced meanwhile: forget and start again
            log.warning("no word from the group for too long: starting again from its commits",
                        extra={"stage": "landing"})  # fmt: skip
            self.lose(mine)
            mine = set()
        if mine - held:
            self.lose(mine - held)
        if held - mine:
            self.gain(held - mine)

    def poll(self) -> list[PartitionBatch]:
        """The next records of the partitions held (after hearing from the group)."""
        if self.group and (
            not self.position or time.monotonic() - self.heard_from_group >= MEMBERSHIP_EVERY_S
        ):
            self._hear_from_group()
        if not self.position:
            time.sleep(POLL_TIMEOUT_S)  # holding nothing: a poll's worth of waiting
            return []
        return self.fetch.poll(self.position)

    # ------------------------------------------------------------ the loop's handler
    def assigned(self, gained: set[TopicPartition]) -> None:
        """Not used: this handler follows the group itself (see :meth:`poll`)."""

    def take(self, polled: Polled) -> None:
        if self.summary.first_record_s is None:
            self.summary.first_record_s = time.monotonic() - self.t0
        self.lander._take(polled, self.buf, self.summary)
        for (topic, part), off in self.buf.last_offsets.items():
            self.position[TopicPartition(topic, part)] = off + 1

    def due(self) -> bool:
        cfg = self.lander.cfg
        return self.buf.count >= cfg.flush_records or (
            self.buf.count > 0 and time.monotonic() - self.last_flush >= cfg.flush_seconds
        )

    def flush(self) -> Offsets:
        if not self.buf.last_offsets:
            return {}
        self.files = self.lander._write(self.buf, self.summary, bounded=self.bounded)
        if self.group and self._silent():
            # Replaced meanwhile, perhaps, and the new owner may have settled this flush's
            # journal (removed its files) already: committing it would lose records on a
            # broker that does not fence stale members. Hear from the group again first.
            self._take_back("no word from the group for longer than it allows")
            self.position.clear()
            self.end.clear()
            self.fetch.restart(self.position)
            return {}
        return self.buf.next_offsets

    def _silent(self) -> bool:
        """Whether the group may have replaced this member since it last heard from it."""
        return time.monotonic() - self.heard_from_group > self.silence_s

    def committed(self, offsets: Offsets) -> None:
        lander, buf, summary = self.lander, self.buf, self.summary
        lander.lake.delete(lander.journal)
        summary.files.extend(self.files)
        summary.dead_letters.update(d.reason for d in buf.dead)
        for tp, off in offsets.items():
            summary.committed[f"{tp.topic}/{tp.partition}"] = off
        log.info(
            "flushed",
            extra={"stage": "landing", "run_id": summary.run_id, "records": buf.count,
                   "files": len(self.files)},
        )  # fmt: skip
        self.buf, self.last_flush, self.files = _Buffer(), time.monotonic(), []

    def refused(self, offsets: Offsets) -> None:
        """The group moved on before the commit: take the flush back (its records' owner
        reads them again from the last commit) and start again from the group's commits."""
        self._take_back("the group rebalanced before its commit")
        held = set(self.position)
        self.position.clear()
        self.end.clear()
        self.gain(held)

    def _take_back(self, why: str) -> None:
        """Undo the flush written and not committed: its files, its journal, its counts."""
        lander, summary = self.lander, self.summary
        for rel in self.files:
            lander.lake.delete(rel)
        lander.lake.delete(lander.journal)
        summary.records -= self.buf.count
        summary.flushes -= 1
        summary.vitals -= sum(t.num_rows for t in self.buf.vitals)
        summary.outcomes -= sum(t.num_rows for t in self.buf.outcomes)
        summary.admissions -= sum(t.num_rows for t in self.buf.admissions)
        log.warning(
            f"flush taken back: {why}", extra={"stage": "landing", "files": len(self.files)}
        )
        self.buf, self.last_flush, self.files = _Buffer(), time.monotonic(), []


def main(
    continuous: bool = typer.Option(False, help="Run until stopped instead of draining once."),
    max_seconds: float = typer.Option(None, help="Stop after this many seconds."),
) -> None:
    """Land Kafka vitals, outcomes and admissions into the raw lake."""
    settings = load_settings()
    configure_logging(settings.logging)
    s = Lander(settings).run(bounded=not continuous, max_seconds=max_seconds)
    dead = ", ".join(f"{k}={v}" for k, v in sorted(s.dead_letters.items())) or "none"
    typer.echo(
        f"landed {s.records:,} records in {s.seconds:.1f}s ({s.rate:,.0f}/s): "
        f"{s.vitals:,} vitals, {s.outcomes} outcomes, {s.admissions} admissions, "
        f"dead letters: {dead}; "
        f"{len(s.files)} files under {Lake(settings.resolve(settings.lake.root)).uri}/raw"
    )


if __name__ == "__main__":
    typer.run(main)
