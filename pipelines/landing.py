"""Kafka → raw lake (``make ingest``): every offset lands exactly once, nothing is dropped.

Vitals and outcomes are validated against their contracts and written as Parquet,
partitioned by event date and hour (``raw/vitals/date=YYYY-MM-DD/hour=HH/``). Messages
that cannot be decoded or break the contract go, with their original bytes and the
reason, to ``raw/deadletter/`` and to the dead-letter topic.

Exactly once into the lake, across crashes, by a write-ahead journal per consumer group:

1. write ``_landing/<group>/pending.json``: the files this flush will write and the
   offsets it will commit;
2. write the Parquet files (each atomically);
3. commit the offsets to Kafka;
4. delete the journal.

On start, a leftover journal whose offsets were not committed means a crash between 1 and
3: its files are deleted and the same offsets are consumed again. The dead-letter *topic*
is at-least-once (a crash after step 2 may resend); the lake is the record.

Modes: ``bounded`` drains up to the end offsets seen at start, then exits (what Airflow
schedules); ``continuous`` runs until SIGINT/SIGTERM, flushing on size or time.
"""

from __future__ import annotations

import logging
import os
import signal
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import FrameType
from typing import Any

import numpy as np
import pyarrow as pa
import typer
from pydantic import ValidationError

from stack.contracts import OutcomeEvent, VitalsEvent, violation_reason
from stack.kafka import Consumer, KafkaClient, Producer, Record, TopicPartition
from stack.lake import Lake
from stack.localstack import endpoints, ensure_topics
from stack.logs import configure_logging
from stack.settings import Settings, load_settings

log = logging.getLogger("vigil.landing")

RAW_VITALS = "raw/vitals"
RAW_OUTCOMES = "raw/outcomes"
RAW_DEAD = "raw/deadletter"
FAILPOINT_ENV = "VIGIL_FAILPOINT"  # "landing.after_write:N" → die after the N-th flush's files

_TS = pa.timestamp("us", tz="UTC")
_KAFKA_COLS = [
    ("kafka_topic", pa.string()),
    ("kafka_partition", pa.int32()),
    ("kafka_offset", pa.int64()),
    ("kafka_ts", _TS),
    ("landed_at", _TS),
]
VITALS_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("schema_version", pa.int16()),
        ("patient_id", pa.string()),
        ("device_id", pa.string()),
        ("ts", _TS),
        ("heart_rate", pa.float64()),
        ("systolic_bp", pa.float64()),
        ("diastolic_bp", pa.float64()),
        ("spo2", pa.float64()),
        ("resp_rate", pa.float64()),
        ("temperature", pa.float64()),
        ("consciousness", pa.string()),
        ("on_oxygen", pa.bool_()),
        *_KAFKA_COLS,
    ]
)
OUTCOMES_SCHEMA = pa.schema(
    [
        ("outcome_id", pa.string()),
        ("schema_version", pa.int16()),
        ("patient_id", pa.string()),
        ("ts", _TS),
        ("kind", pa.string()),
        ("event", pa.string()),
        *_KAFKA_COLS,
    ]
)
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
    dead_letters: Counter[str] = field(default_factory=Counter)
    files: list[str] = field(default_factory=list)
    flushes: int = 0
    recovered_files: int = 0
    seconds: float = 0.0
    committed: dict[str, int] = field(default_factory=dict)
    peak_rss_mb: float = 0.0

    @property
    def rate(self) -> float:
        return self.records / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "mode": self.mode,
            "records": self.records,
            "vitals": self.vitals,
            "outcomes": self.outcomes,
            "dead_letters": dict(self.dead_letters),
            "files": len(self.files),
            "flushes": self.flushes,
            "recovered_files": self.recovered_files,
            "seconds": round(self.seconds, 3),
            "records_per_s": round(self.rate, 1),
            "committed": self.committed,
            "peak_rss_mb": round(self.peak_rss_mb, 1),
        }


class _Buffer:
    """Column lists for one flush; appending a validated event is a handful of list appends."""

    def __init__(self) -> None:
        self.vitals: dict[str, list[Any]] = {f.name: [] for f in VITALS_SCHEMA}
        self.outcomes: dict[str, list[Any]] = {f.name: [] for f in OUTCOMES_SCHEMA}
        self.dead: dict[str, list[Any]] = {f.name: [] for f in DEAD_SCHEMA}
        self.next_offsets: dict[TopicPartition, int] = {}
        self.count = 0

    @staticmethod
    def _kafka(cols: dict[str, list[Any]], rec: Record, now: datetime) -> None:
        cols["kafka_topic"].append(rec.topic)
        cols["kafka_partition"].append(rec.partition)
        cols["kafka_offset"].append(rec.offset)
        cols["kafka_ts"].append(rec.timestamp_ms * 1000)
        cols["landed_at"].append(now)

    def add_vitals(self, ev: VitalsEvent, rec: Record, now: datetime) -> None:
        c = self.vitals
        d = ev.__dict__
        c["event_id"].append(str(d["event_id"]))
        for name in (
            "schema_version", "patient_id", "device_id", "ts", "heart_rate", "systolic_bp",
            "diastolic_bp", "spo2", "resp_rate", "temperature", "consciousness", "on_oxygen",
        ):  # fmt: skip
            c[name].append(d[name])
        self._kafka(c, rec, now)

    def add_outcome(self, ev: OutcomeEvent, rec: Record, now: datetime) -> None:
        c = self.outcomes
        d = ev.__dict__
        c["outcome_id"].append(str(d["outcome_id"]))
        for name in ("schema_version", "patient_id", "ts", "kind", "event"):
            c[name].append(d[name])
        self._kafka(c, rec, now)

    def add_dead(self, rec: Record, reason: str, detail: str, now: datetime) -> None:
        c = self.dead
        c["reason"].append(reason)
        c["detail"].append(detail)
        c["key"].append(rec.key)
        c["value"].append(rec.value)
        self._kafka(c, rec, now)


def _by_hour(table: pa.Table, ts_col: str) -> dict[str, pa.Table]:
    """Split a table by UTC date/hour of ``ts_col`` → ``{"date=…/hour=…": table}``."""
    if table.num_rows == 0:
        return {}
    us = table.column(ts_col).cast(pa.int64()).to_numpy(zero_copy_only=False)
    hours = us // 3_600_000_000
    out = {}
    for h in np.unique(hours).tolist():
        stamp = datetime.fromtimestamp(h * 3600, UTC)
        key = f"date={stamp:%Y-%m-%d}/hour={stamp:%H}"
        out[key] = table.filter(pa.array(hours == h))
    return out


class Lander:
    """Drains the vitals and outcomes topics into the raw lake."""

    def __init__(self, settings: Settings, *, client: KafkaClient | None = None) -> None:
        self.settings = settings
        self.cfg = settings.landing
        self.topics = settings.kafka.topics
        self.client = client or KafkaClient(settings.kafka, endpoints(settings).bootstrap_servers)
        self.lake = Lake(settings.resolve(settings.lake.root))
        self.journal = f"_landing/{self.cfg.group_id}/pending.json"
        self._stop = False
        self._failpoint = self._parse_failpoint()

    @staticmethod
    def _parse_failpoint() -> int | None:
        raw = os.environ.get(FAILPOINT_ENV, "")
        if raw.startswith("landing.after_write:"):
            return int(raw.split(":", 1)[1])
        return None

    # ------------------------------------------------------------------ recovery
    def _recover(self, consumer: Consumer, summary: LandingSummary) -> None:
        if not self.lake.exists(self.journal):
            return
        pending = self.lake.read_json(self.journal)
        planned = {
            TopicPartition(t, int(p)): int(o)
            for t, parts in pending["offsets"].items()
            for p, o in parts.items()
        }
        committed = all((consumer.committed(tp) or 0) >= off for tp, off in planned.items())
        if not committed:
            for rel in pending["files"]:
                self.lake.delete(rel)
            summary.recovered_files = len(pending["files"])
            log.warning(
                "recovered an interrupted flush: its files were removed and will be rewritten",
                extra={"stage": "landing", "files": len(pending["files"])},
            )
        self.lake.delete(self.journal)

    # ------------------------------------------------------------------ flush
    def _flush(
        self, buf: _Buffer, consumer: Consumer, dlq: Producer | None, summary: LandingSummary
    ) -> None:
        if not buf.next_offsets:
            return
        tables = {
            RAW_VITALS: _by_hour(pa.table(buf.vitals, schema=VITALS_SCHEMA), "ts"),
            RAW_OUTCOMES: _by_hour(pa.table(buf.outcomes, schema=OUTCOMES_SCHEMA), "ts"),
            RAW_DEAD: _by_hour(pa.table(buf.dead, schema=DEAD_SCHEMA), "kafka_ts"),
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
        self.lake.write_json(
            {"files": [rel for rel, _ in plan], "offsets": offsets, "run_id": summary.run_id},
            self.journal,
        )
        for rel, table in plan:
            self.lake.write_parquet(table, rel)
        summary.flushes += 1
        if self._failpoint is not None and summary.flushes >= self._failpoint:
            os._exit(17)  # simulated crash: files written, offsets not committed
        if dlq is not None and buf.dead["value"]:
            for key, value, reason, detail, topic, part, off in zip(
                buf.dead["key"], buf.dead["value"], buf.dead["reason"], buf.dead["detail"],
                buf.dead["kafka_topic"], buf.dead["kafka_partition"], buf.dead["kafka_offset"],
                strict=True,
            ):  # fmt: skip
                dlq.send(
                    self.topics.dead_letters,
                    value or b"",
                    key=key,
                    headers=[
                        ("reason", reason.encode()),
                        ("detail", detail.encode()),
                        ("source", f"{topic}/{part}/{off}".encode()),
                    ],
                )
            dlq.flush()
        consumer.commit(buf.next_offsets)
        self.lake.delete(self.journal)
        summary.files.extend(rel for rel, _ in plan)
        for tp, off in buf.next_offsets.items():
            summary.committed[f"{tp.topic}/{tp.partition}"] = off
        log.info(
            "flushed",
            extra={
                "stage": "landing",
                "run_id": summary.run_id,
                "records": buf.count,
                "files": len(plan),
            },
        )

    # ------------------------------------------------------------------ main loop
    def _handle(self, rec: Record, buf: _Buffer, summary: LandingSummary, now: datetime) -> None:
        buf.count += 1
        buf.next_offsets[TopicPartition(rec.topic, rec.partition)] = rec.offset + 1
        if rec.value is None:
            buf.add_dead(rec, "empty_message", "message has no value", now)
            summary.dead_letters["empty_message"] += 1
            return
        try:
            if rec.topic == self.topics.vitals:
                buf.add_vitals(VitalsEvent.model_validate_json(rec.value), rec, now)
                summary.vitals += 1
            else:
                buf.add_outcome(OutcomeEvent.model_validate_json(rec.value), rec, now)
                summary.outcomes += 1
        except ValidationError as exc:
            reason, detail = violation_reason(exc)
            buf.add_dead(rec, reason, detail, now)
            summary.dead_letters[reason] += 1

    def run(self, *, bounded: bool = True, max_seconds: float | None = None) -> LandingSummary:
        """Land messages; bounded mode stops at the end offsets seen at start.

        Args:
            bounded: drain and exit (Airflow) rather than run until stopped.
            max_seconds: stop (after a final flush) once this much time has passed.
        """
        import psutil

        summary = LandingSummary(
            run_id=uuid.uuid4().hex[:12], mode="bounded" if bounded else "continuous"
        )
        ensure_topics(self.settings) if not self.settings.kafka.bootstrap_servers else None
        topics = [self.topics.vitals, self.topics.outcomes]
        partitions = self.client.all_partitions(topics)
        consumer = self.client.consumer(self.cfg.group_id)
        dlq = self.client.producer() if self.cfg.dead_letters_to_topic else None
        proc = psutil.Process()
        t0 = time.monotonic()
        try:
            consumer.assign(partitions)
            self._recover(consumer, summary)
            begin = consumer.beginning_offsets(partitions)
            position = {tp: consumer.committed(tp) or begin[tp] for tp in partitions}
            for tp, off in position.items():
                consumer.seek(tp, off)
            end = consumer.end_offsets(partitions) if bounded else {}
            buf = _Buffer()
            last_flush = last_data = time.monotonic()
            self._install_signal_handlers()
            caught_up = False
            while not self._stop:
                if bounded and all(position[tp] >= end[tp] for tp in partitions):
                    # Some brokers (Tansu) report the end of the last *batch* start, and a
                    # poll may leave part of a fetched batch buffered: one more poll takes
                    # what was already there, then the drain ends.
                    if caught_up:
                        break
                    caught_up = True
                records = consumer.poll_batch(
                    self.settings.kafka.consumer.max_poll_records, 0.2 if caught_up else 0.5
                )
                now = datetime.now(UTC)
                for rec in records:
                    self._handle(rec, buf, summary, now)
                    position[TopicPartition(rec.topic, rec.partition)] = rec.offset + 1
                summary.records += len(records)
                mono = time.monotonic()
                if records:
                    last_data = mono
                elif bounded and mono - last_data > self.cfg.idle_timeout_s:
                    log.warning(
                        "no data before reaching the end offsets; stopping",
                        extra={"stage": "landing", "lagging": {
                            f"{tp.topic}/{tp.partition}": end[tp] - position[tp]
                            for tp in partitions if position[tp] < end[tp]
                        }},
                    )  # fmt: skip
                    break
                if buf.count >= self.cfg.flush_records or (
                    buf.count and mono - last_flush >= self.cfg.flush_seconds
                ):
                    self._flush(buf, consumer, dlq, summary)
                    summary.peak_rss_mb = max(summary.peak_rss_mb, proc.memory_info().rss / 2**20)
                    buf, last_flush = _Buffer(), mono
                if max_seconds is not None and mono - t0 > max_seconds:
                    break
            self._flush(buf, consumer, dlq, summary)
        finally:
            summary.peak_rss_mb = max(summary.peak_rss_mb, proc.memory_info().rss / 2**20)
            consumer.close()
            if dlq is not None:
                dlq.close()
        summary.seconds = time.monotonic() - t0
        self.lake.write_json(
            summary.to_dict(), f"_landing/{self.cfg.group_id}/runs/{summary.run_id}.json"
        )
        log.info("landing done", extra={"stage": "landing", **summary.to_dict()})
        return summary

    def _install_signal_handlers(self) -> None:
        def stop(_sig: int, _frame: FrameType | None) -> None:
            self._stop = True

        try:
            signal.signal(signal.SIGTERM, stop)
            signal.signal(signal.SIGINT, stop)
        except ValueError:
            pass  # not the main thread (e.g. inside a test runner thread): no handlers


def main(
    continuous: bool = typer.Option(False, help="Run until stopped instead of draining once."),
    max_seconds: float = typer.Option(None, help="Stop after this many seconds."),
) -> None:
    """Land Kafka vitals and outcomes into the raw lake."""
    settings = load_settings()
    configure_logging(settings.logging)
    s = Lander(settings).run(bounded=not continuous, max_seconds=max_seconds)
    dead = ", ".join(f"{k}={v}" for k, v in sorted(s.dead_letters.items())) or "none"
    typer.echo(
        f"landed {s.records:,} records in {s.seconds:.1f}s ({s.rate:,.0f}/s): "
        f"{s.vitals:,} vitals, {s.outcomes} outcomes, dead letters: {dead}; "
        f"{len(s.files)} files under {Lake(settings.resolve(settings.lake.root)).uri}/raw"
    )


if __name__ == "__main__":
    typer.run(main)
