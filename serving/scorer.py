"""``make score``: the Kafka scoring consumer in front of the BentoML service.

Each poll batch of ``vitals.raw``:

1. is validated against the contract; invalid messages go to ``scoring_dead_letters``
   (PostgreSQL) with the reason and the original bytes;
2. updates the online feature state (``features.online``: the ETL's own cleaning and
   aggregation, the batch path's own transform), which yields one feature vector per
   accepted event; events beyond the lateness bound or from the future are stored with
   that status instead of a risk;
3. is scored by the service in micro-batches of feature columns sent as Arrow
   (``/arrow/predict``, ``serving.wire``; also with ``shadow`` when a ``@challenger``
   exists: stored with role ``shadow``, never alerting);
4. passes the alert policy (``serving.alerts``), events scored for the first time only (a
   redelivered event's alert was decided and stored with its first prediction); alerts
   are explained by the call that scored them where the model's explanations are cheap,
   else by ``/explain``;
5. is stored — predictions and alerts keyed by ``event_id``, inserted with ``ON CONFLICT
   DO NOTHING`` — and published to ``predictions`` and ``alerts``; then, and only then,
   the consumer's offsets are committed.

At-least-once: a crash re-delivers the uncommitted batch, which is scored again but
never stored twice; an alert is published only when its row is new. SIGTERM finishes the
batch in hand, commits and exits.

No record stops the scorer (``stack.resilience``): a micro-batch the service refuses
(4xx) is retried on halves until the rows it refuses are alone, and those events become
dead letters (``service_rejected``, with their original bytes); rows PostgreSQL refuses
(a data error, a constraint) are isolated the same way (``store_rejected``); the online
state failing on some events isolates them too (``internal_error``). The rest of the
batch is scored and stored as usual.

No outage stops it either: PostgreSQL, the service or the broker being away is waited
out with doubling backoff while the consumer keeps its partitions (paused, still
polling, so the group does not rebalance them away) and the batch in hand; the state is
the ``vigil_scorer_dependency_up`` gauge. A bounded run (``make score BOUNDED=1``) gives
up after ``scorer.outage_max_wait_s`` with an error naming the dependency.

Admissions (age, sex, SpO2 scale) are read from the start of the ``admissions`` topic
by a group-less consumer, so a restarted scorer knows every patient on the ward.

Partitions the scorer is given — at its start, and by each rebalance among workers —
are taken over before they are scored: their last ``scorer.warmup_minutes`` of events
before the group's committed offsets are replayed into the online state unscored
(``serving.replay``), so a restart or a hand-over does not start every patient's
windows empty, and the alert policy is read again from the alerts table.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import signal
import threading
import time
import uuid
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import psycopg
import pyarrow as pa
import typer

from features.online import OnlineFeatures
from features.spec import FEATURE_SET_VERSION
from serving.alerts import AlertPolicy
from serving.client import (
    NoShadowModelError,
    ServiceClient,
    ServiceRejectedError,
    ServiceUnavailableError,
    feature_matrix,
)
from serving.metrics import ScorerMetrics
from serving.replay import HistoryReplay
from stack.batchvalidate import BatchValidator
from stack.contracts import AdmissionEvent, VitalsEvent, sane_kafka_ts_ms
from stack.db import connect, copy_table, migrate
from stack.gctune import freeze_startup_heap
from stack.kafka import (
    CommitFailedError,
    Consumer,
    KafkaClient,
    PartitionBatch,
    Producer,
    Record,
    TopicPartition,
    is_broker_outage,
)
from stack.localstack import endpoints
from stack.logs import configure_logging
from stack.resilience import Isolated, Outage, OutageError, isolate
from stack.settings import Settings, load_settings

log = logging.getLogger("vigil.scorer")
ADMISSIONS_WAIT_S = 10.0  # a takeover waits this long at most for the admissions so far
LAG_EVERY_S = 5.0  # consumer lag is measured this often (by a thread: broker round trips)

PREDICTION_COLUMNS = (
    "event_id", "role", "patient_id", "ts", "as_of", "status", "risk", "alert", "threshold",
    "model_name", "model_version", "kafka_ts", "scored_at",
)  # fmt: skip


def service_url(settings: Settings) -> str:
    s = settings.serving
    return s.url or f"http://{s.host}:{s.port}"


LATENCY_WINDOW = 100_000  # events whose latency the summary's percentiles describe
SLOWEST_KEPT = 5  # batches kept in the summary's slowest_batches


@dataclass
class ScoreSummary:
    records: int = 0
    valid: int = 0
    invalid: Counter[str] = field(default_factory=Counter)
    scored: int = 0
    status: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    stored: int = 0
    shadow_stored: int = 0
    alerts: int = 0
    suppressed: int = 0
    replayed_alerts: int = 0  # crossed the threshold again on redelivery: decided before
    batches: int = 0
    retries: int = 0
    uncommitted_batches: int = 0  # stored, but the group rebalanced before the commit
    replayed_events: int = 0  # history folded in unscored when partitions came (replay)
    takeovers: int = 0  # times this scorer was given partitions (its start, rebalances)
    restored_stays: int = 0  # stays whose first hours came from stay_baselines (replay)
    # Contract-valid events isolated as dead letters later on (service_rejected, ...).
    isolated: Counter[str] = field(default_factory=Counter)
    outages: Counter[str] = field(default_factory=Counter)  # dependency -> outages waited out
    seconds: float = 0.0
    started_at: float = field(default_factory=time.time)  # epoch seconds of the start
    first_record_s: float | None = None  # from the start (migrations, group join) to data
    last_batch_s: float | None = None  # from the start to the end of the last batch
    # The most recent events' latencies (a scorer runs for weeks: the summary must not
    # grow with it); the full distribution is the Prometheus histogram's.
    latency_ms: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))
    versions: Counter[str] = field(default_factory=Counter)
    # Wall seconds per step of the loop (poll, validate, features, score, ...): where a
    # batch's time goes; also the ``vigil_scorer_step_seconds`` histogram.
    step_seconds: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    # The slowest batches, with their steps: where a latency tail comes from.
    slowest_batches: list[dict[str, Any]] = field(default_factory=list)
    # A merged summary (serving.workers): the events each worker scored.
    per_worker_scored: list[int] = field(default_factory=list)

    def note_batch(self, events: int, steps: dict[str, float]) -> None:
        """Keep the batch among :data:`SLOWEST_KEPT` slowest if it is one of them."""
        total = sum(steps.values())
        kept = self.slowest_batches
        if len(kept) < SLOWEST_KEPT or total > kept[-1]["seconds"]:
            kept.append({"seconds": round(total, 4), "events": events, "batch": self.batches,
                         "steps": {k: round(v, 4) for k, v in steps.items()}})  # fmt: skip
            kept.sort(key=lambda b: -b["seconds"])
            del kept[SLOWEST_KEPT:]

    @property
    def drain_rate(self) -> float:
        """Events scored per second from the first record to the end of the last batch:
        the sustained rate, without startup (joining the group) and the idle tail."""
        if self.first_record_s is None or self.last_batch_s is None:
            return 0.0
        busy = self.last_batch_s - self.first_record_s
        return self.scored / busy if busy > 0 else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latency_ms, q)) if self.latency_ms else float("nan")

    def to_dict(self, *, latencies: bool = False) -> dict[str, Any]:
        """The summary as JSON-ready values; with ``latencies``, the raw ``latency_ms``
        too (a worker's summary, merged by its parent: percentiles do not add up)."""
        out = {k: v for k, v in self.__dict__.items() if k != "latency_ms"}
        if latencies:
            out["latency_ms"] = list(self.latency_ms)
        out["invalid"] = dict(self.invalid)
        out["isolated"] = dict(self.isolated)
        out["outages"] = dict(self.outages)
        out["status"] = dict(self.status)
        out["versions"] = dict(self.versions)
        out["step_seconds"] = {k: round(v, 3) for k, v in self.step_seconds.items()}
        out["latency_p50_ms"] = self.percentile(50)
        out["latency_p99_ms"] = self.percentile(99)
        out["events_per_s"] = self.scored / self.seconds if self.seconds else 0.0
        out["drain_events_per_s"] = self.drain_rate
        return out


class _Laps:
    """Times consecutive steps of the loop into the summary and the step histogram."""

    def __init__(self, summary: ScoreSummary, metrics: ScorerMetrics) -> None:
        self.summary, self.metrics = summary, metrics
        self.t = time.perf_counter()
        self.steps: dict[str, float] = {}

    def lap(self, step: str) -> None:
        now = time.perf_counter()
        self.summary.step_seconds[step] += now - self.t
        self.metrics.step.labels(step=step).observe(now - self.t)
        self.steps[step] = self.steps.get(step, 0.0) + now - self.t
        self.t = now


class Scorer:
    """Consume, score, alert, store; see the module docstring."""

    def __init__(self, settings: Settings, *, kafka: KafkaClient | None = None) -> None:
        self.settings = settings
        self.cfg = settings.scorer
        self.topics = settings.kafka.topics
        self.kafka = kafka or KafkaClient(settings.kafka, endpoints(settings).bootstrap_servers)
        self.online = self._online_state()
        self.policy = AlertPolicy(
            quiet_period=pd.Timedelta(minutes=self.cfg.quiet_period_minutes),
            margin=self.cfg.realert_margin,
        )
        self.service = ServiceClient(
            service_url(settings),
            timeout_s=self.cfg.request_timeout_s,
            api_key=settings.serving.api_key,
        )
        bounds = settings.contract.bounds()
        self.validator = BatchValidator(VitalsEvent, bounds)
        self.adm_validator = BatchValidator(AdmissionEvent, bounds)
        self.stop = threading.Event()
        self.metrics = ScorerMetrics()
        self._consumer: Consumer | None = None  # the group's consumer while running
        self._paused = False
        self.outages = {name: self._outage(name) for name in DEPENDENCIES}
        self.ready = threading.Event()  # set once the consumer holds its partitions
        self._shadow_checked = 0.0
        self._shadow = True
        self._conn: psycopg.Connection[Any] | None = None
        self._adm_next: dict[TopicPartition, int] = {}  # admissions read up to here
        self._summary: ScoreSummary | None = None  # the run's, for the outage counters

    # ------------------------------------------------------------------ outages
    def _outage(self, name: str) -> Outage:
        gauge = self.metrics.dependency_up.labels(dependency=name)
        gauge.set(1)

        def state(down: bool) -> None:
            gauge.set(0 if down else 1)
            if down:
                self.metrics.outages.labels(dependency=name).inc()

        def retried(_exc: BaseException) -> None:
            if name == "service":
                self.metrics.retries.inc()
                if self._summary is not None:
                    self._summary.retries += 1

        return Outage(
            name,
            initial_s=self.cfg.backoff_initial_s,
            max_s=self.cfg.backoff_max_s,
            stop=self.stop,
            on_state=state,
            on_retry=retried,
            keep_alive=self._keep_alive,
        )

    def _keep_alive(self) -> None:
        """During an outage: stay in the group without reading on (partitions paused,
        the batch in hand kept). A record from a partition assigned meanwhile is put back
        (seek) and read after the outage, when that partition is taken over."""
        c = self._consumer
        if c is None:
            return
        c.pause(sorted(c.assignment(), key=lambda tp: (tp.topic, tp.partition)))
        self._paused = True
        for b in c.poll_columns(1000, 0.0):
            c.seek(TopicPartition(b.topic, b.partition), b.offsets[0])

    def _resume(self, consumer: Consumer) -> None:
        if self._paused:
            consumer.resume(sorted(consumer.assignment(), key=lambda tp: (tp.topic, tp.partition)))
            self._paused = False

    def _pg(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` (database work), waiting out PostgreSQL outages."""
        return self.outages["postgres"].call(fn, retry_on=_pg_outage)

    def _kafka(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` (broker work), waiting out broker outages."""
        return self.outages["kafka"].call(fn, retry_on=is_broker_outage)

    # ------------------------------------------------------------------ startup
    def _online_state(self) -> OnlineFeatures:
        return OnlineFeatures(
            lateness_minutes=self.settings.features.lateness_minutes,
            max_future_minutes=int(self.settings.etl.max_future_minutes),
        )

    def _seed_alert_policy(self) -> None:
        def read() -> list[Any]:
            with connect(self.settings) as conn:
                return conn.execute(
                    "SELECT DISTINCT ON (patient_id) patient_id, ts, risk FROM alerts "
                    "ORDER BY patient_id, ts DESC"
                ).fetchall()

        rows = self._pg(read)
        for pid, ts, risk in rows:
            self.policy.remember(pid, pd.Timestamp(ts), float(risk))

    def _warm_up(self) -> None:
        """Run one made-up event through validation, a throwaway online state and the
        service before the first real batch.

        The first batch otherwise pays every cold path at once — the first request to the
        service (connection, its first call), first calls into pandas and numpy — about
        0.1 s on top of what is usually the largest batch (what arrived while the group
        was joined), and its events were the paced run's latency tail. The real state
        and the stored tables are not touched; a service that is not up yet is fine.
        """
        now = pd.Timestamp.now(tz="UTC")
        event = orjson.dumps({
            "event_id": str(uuid.uuid4()), "schema_version": 1, "patient_id": "warm-up",
            "device_id": "warm-up", "ts": now.isoformat(), "heart_rate": 80.0,
            "systolic_bp": 120.0, "diastolic_bp": 75.0, "spo2": 97.0, "resp_rate": 16.0,
            "temperature": 37.0, "consciousness": "A", "on_oxygen": False,
        })  # fmt: skip
        valid = self.validator.validate([event]).table.to_pandas().drop(columns="_index")
        vec = self._online_state().update(valid, now=now)  # a throwaway state
        try:
            self.service.predict_matrix(feature_matrix(vec), explain=True)
        except (ServiceUnavailableError, ServiceRejectedError) as exc:
            log.info("warm-up: the service did not answer (scoring will retry): %s", exc)

    def _admissions(self, consumer: Consumer, *, to_end: bool = False) -> None:
        """Fold in the admissions that have arrived; ``to_end``: every one on the topic
        now, waiting up to :data:`ADMISSIONS_WAIT_S` (a takeover: a fresh consumer's
        first poll returns nothing yet, and the first batch's vectors need the ages,
        sexes and SpO2 scales)."""
        ends: dict[TopicPartition, int] = {}
        if to_end:
            parts = self.kafka.all_partitions([self.topics.admissions])
            ends = {tp: hi for tp, (lo, hi) in consumer.watermarks(parts).items() if hi > lo}
        deadline = time.monotonic() + ADMISSIONS_WAIT_S
        while True:
            recs = consumer.poll_batch(50_000, 0.2 if ends else 0.0)
            for r in recs:
                tp = TopicPartition(r.topic, r.partition)
                self._adm_next[tp] = max(self._adm_next.get(tp, 0), r.offset + 1)
            if recs:
                res = self.adm_validator.validate([r.value or b"" for r in recs])
                if res.table.num_rows:
                    self.online.admit(res.table.to_pandas())
            reached = all(self._adm_next.get(tp, 0) >= hi for tp, hi in ends.items())
            if reached or time.monotonic() > deadline:
                if not reached:
                    log.warning("admissions not read to their end in %.0f s", ADMISSIONS_WAIT_S)
                return

    def _start_new_group_at_end(self, settle_s: float = 5.0) -> None:
        """A group that has never committed starts at the end of the topic (from now on).

        The end is read, not taken from the high watermarks: Tansu reports a partition's
        high watermark as its last record *batch*'s base offset + 1, so a group started
        there scored up to a batch of old events per partition (the demo saw p99
        latencies of minutes). The records from the reported watermark on are read
        (at most ``settle_s``, in case producers are live) and the group starts after
        the last one.
        """
        c = self.kafka.consumer(self.cfg.group_id)
        try:
            parts = self.kafka.all_partitions([self.topics.vitals])
            c.assign(parts)
            if any(v is not None for v in c.committed(parts).values()):
                return
            ends = {tp: hi for tp, (_lo, hi) in c.watermarks(parts).items()}
            c.assign(parts, dict(ends))
            deadline = time.monotonic() + settle_s
            while time.monotonic() < deadline:
                batches = c.poll_columns(50_000, 0.3)
                if not batches:
                    break
                for b in batches:
                    tp = TopicPartition(b.topic, b.partition)
                    ends[tp] = max(ends[tp], b.offsets[-1] + 1)
            c.commit(ends)
        finally:
            c.close()

    def lag(self) -> int:
        """Events on ``vitals.raw`` not yet committed by this scorer's group."""
        c = self.kafka.consumer(self.cfg.group_id)
        try:
            parts = self.kafka.all_partitions([self.topics.vitals])
            done = c.committed(parts)
            return sum(hi - (done.get(tp) or lo) for tp, (lo, hi) in c.watermarks(parts).items())
        finally:
            c.close()

    def _watch_lag(self, stop: threading.Event) -> None:
        """Set the lag gauges of ``vitals.raw`` now and every :data:`LAG_EVERY_S` until
        ``stop`` (best effort: metrics must never stop scoring).

        A thread of its own with its own consumer (which reads the group's committed
        offsets but never joins the group): the broker round trips take 0.1-0.4 s, which
        in the scoring loop were a stall of every batch that met them.
        """
        c: Consumer | None = None
        parts: list[TopicPartition] = []
        while True:
            try:
                if c is None:
                    c = self.kafka.consumer(self.cfg.group_id)
                    parts = self.kafka.all_partitions([self.topics.vitals])
                done = c.committed(parts)
                for tp, (lo, hi) in c.watermarks(parts).items():
                    lag = hi - (done.get(tp) or lo)
                    self.metrics.lag.labels(topic=tp.topic, partition=str(tp.partition)).set(lag)
            except Exception as exc:
                log.warning("consumer lag not measured: %s", exc)
            if stop.wait(LAG_EVERY_S):
                break
        if c is not None:
            c.close()

    def _take_over(
        self,
        consumer: Consumer,
        adm: Consumer,
        gained: set[TopicPartition],
        summary: ScoreSummary,
    ) -> None:
        """Partitions given to this scorer (its start, a rebalance), before it scores
        them: the admissions so far, the last ``warmup_minutes`` of their history
        replayed into the online state unscored (``serving.replay``), and the alert
        policy read again from the alerts table (another worker may have alerted on
        their patients meanwhile)."""
        t0 = time.perf_counter()
        ordered = sorted(gained, key=lambda tp: (tp.topic, tp.partition))
        committed = self._kafka(lambda: consumer.committed(ordered))
        self._admissions(adm, to_end=True)
        self._seed_alert_policy()
        now = pd.Timestamp.now(tz="UTC")
        counts = self.online.counts.copy()  # the replay is not this run's traffic
        known = set(self.online.slots)
        replayed: set[str] = set()

        def fold(events: pd.DataFrame) -> None:
            replayed.update(events["patient_id"].unique().tolist())
            # History that cannot be folded in is left out, never a reason not to start.
            self._update_isolated(events, now)

        reader = self.kafka.consumer(None)
        try:
            done = HistoryReplay(
                reader,
                self.validator,
                fold,
                minutes=self.cfg.warmup_minutes,
                poll_records=self.settings.kafka.consumer.max_poll_records,
            ).run(committed)
        finally:
            reader.close()
            self.online.counts = counts
        # Stays that began before the replayed history: their first minute and first
        # hours from the store (the scorer that saw them begin wrote them); the others
        # near the cut may have lost their start, so are not stored from this state.
        restored = 0
        if replayed:
            cut = max(done.since.values(), default=0.0) + self.settings.features.lateness_minutes
            self.online.distrust(sorted(replayed - known), int(cut))
            restored = self.online.restore_stays(self._stays(sorted(replayed)))
        summary.restored_stays += restored
        summary.takeovers += 1
        summary.replayed_events += done.events
        self.metrics.replayed.inc(done.events)
        seconds = time.perf_counter() - t0
        summary.step_seconds["replay"] += seconds
        log.info(
            "took over %d partition(s): replayed %d events (%d records) of the last %d "
            "minutes unscored, restored %d stays' first hours, in %.1f s",
            len(gained), done.events, done.records, self.cfg.warmup_minutes, restored, seconds,
        )  # fmt: skip

    # ------------------------------------------------------------------ the service
    def _call(self, fn: Callable[[], Any]) -> Any:
        """Call the service, waiting out its outages (the batch in hand kept)."""
        return self.outages["service"].call(
            fn, retry_on=lambda exc: isinstance(exc, ServiceUnavailableError)
        )

    def _score(self, x: np.ndarray) -> tuple[pd.DataFrame, list[tuple[int, str]]]:
        """The champion's predictions of the feature matrix ``x``, in micro-batches,
        waiting out the service's outages; rows that crossed the threshold come with
        their top features (for alerts).

        Returns:
            The predictions of the rows the service took, in row order, and the rows it
            refused (a 4xx that persists when the row is sent alone), with the reason.
        """
        n = self.cfg.micro_batch_rows
        parts: list[pd.DataFrame] = []
        refused: list[tuple[int, str]] = []
        if not len(x):
            return _NO_PREDICTIONS, refused
        for a in range(0, len(x), n):
            iso = self._call(functools.partial(self._score_isolated, x[a : a + n]))
            for part, frame in iso.done:
                parts.append(frame.set_axis([a + i for i in part]))
            refused += [(a + i, _first_line(exc)) for i, exc in iso.failed]
        if not parts:
            return _NO_PREDICTIONS, refused
        preds = pd.concat(parts).sort_index()
        return preds.reset_index(drop=True), refused

    def _score_isolated(self, p: np.ndarray) -> Isolated[pd.DataFrame]:
        """One micro-batch scored; rows the service refuses are isolated (bisection)."""
        return isolate(
            range(len(p)),
            lambda part: self.service.predict_matrix(p[part], explain=True),
            poison=lambda exc: isinstance(exc, ServiceRejectedError),
        )

    def _in_micro_batches(
        self, x: np.ndarray, score: Callable[[np.ndarray], pd.DataFrame]
    ) -> pd.DataFrame:
        """``score`` over the rows of ``x`` in slices of ``scorer.micro_batch_rows``."""
        n = self.cfg.micro_batch_rows
        parts = [score(x[a : a + n]) for a in range(0, len(x), n)]
        return pd.concat(parts, ignore_index=True) if parts else _NO_PREDICTIONS

    def _shadow_due(self) -> bool:
        # After a 409 (no challenger), look again only every reload interval.
        if self._shadow:
            return True
        if time.monotonic() - self._shadow_checked > self.settings.serving.reload_interval_s:
            self._shadow = True
        return self._shadow

    # ------------------------------------------------------------------ one batch
    def process(self, recs: Polled, producer: Producer, summary: ScoreSummary) -> None:
        """Validate, featurise, score, alert and store one poll batch (not the commit)."""
        laps = _Laps(summary, self.metrics)
        now = pd.Timestamp.now(tz="UTC")
        scored_at = datetime.now(UTC)
        summary.records += len(recs)
        res = self.validator.validate(recs.values)
        dead = [(recs.record(i), reason, detail) for i, reason, detail in res.rejects]
        summary.invalid.update(reason for _r, reason, _d in dead)
        for _r, reason, _d in dead:
            self.metrics.invalid.labels(reason=reason).inc()
        self.metrics.events.labels(outcome="invalid").inc(len(dead))
        valid = res.table.to_pandas()
        summary.valid += len(valid)
        where = dict(zip(valid["event_id"].tolist(), valid["_index"].tolist(), strict=True))
        valid = valid.drop(columns="_index").assign(
            _kafka_ts=_kafka_times(recs.timestamps_ms[valid["_index"].to_numpy()])
        )
        laps.lap("validate")

        def isolated(event_ids: Iterable[str], reason: str, detail: str | list[str]) -> None:
            """Contract-valid events set aside as dead letters by a later step."""
            ids = list(event_ids)
            details = detail if isinstance(detail, list) else [detail] * len(ids)
            for e, d in zip(ids, details, strict=True):
                dead.append((recs.record(where[e]), reason, d))
            summary.isolated[reason] += len(ids)
            self.metrics.invalid.labels(reason=reason).inc(len(ids))
            if ids:
                log.error("%d event(s) set aside as dead letters: %s", len(ids), reason)

        repeat = (
            self.online.known(valid["event_id"].tolist())
            | valid["event_id"].duplicated().to_numpy()
        )
        summary.duplicates += int(repeat.sum())
        vec, failed = self._update_isolated(valid.drop(columns="_kafka_ts"), now)
        isolated(failed, "internal_error", "the online features failed on this event")
        fresh = valid[~repeat & ~valid["event_id"].isin(set(failed)).to_numpy()]
        accepted = fresh["event_id"].isin(set(vec["event_id"]))
        rejected = fresh[~accepted.to_numpy()]
        future = rejected["ts"] > now + pd.Timedelta(minutes=self.settings.etl.max_future_minutes)
        status_rows = rejected.assign(status=np.where(future, "future", "too_late"), as_of=pd.NaT)
        summary.status.update(status_rows["status"].tolist())

        kts = fresh.set_index("event_id")["_kafka_ts"]
        vec = vec.assign(_kafka_ts=kts.reindex(vec["event_id"]).array)
        laps.lap("features")
        x = feature_matrix(vec)
        preds, refused = self._score(x)
        if refused:
            out = [i for i, _why in refused]
            isolated(
                vec["event_id"].iloc[out].tolist(),
                "service_rejected",
                [why for _i, why in refused],
            )
            vec = vec.drop(index=vec.index[out]).reset_index(drop=True)
            x = np.delete(x, out, axis=0)
        shadow = _NO_PREDICTIONS
        if len(vec) and self.settings.serving.shadow_alias and self._shadow_due():
            # The shadow never holds up the champion: one attempt, skipped on any failure.
            try:
                shadow = self._in_micro_batches(
                    x, lambda p: self.service.predict_matrix(p, shadow=True)
                )
            except NoShadowModelError:
                self._shadow, self._shadow_checked = False, time.monotonic()
            except (ServiceUnavailableError, ServiceRejectedError) as exc:
                log.warning("shadow scoring skipped for this batch: %s", type(exc).__name__)
                self._shadow, self._shadow_checked = False, time.monotonic()
        summary.scored += len(preds)
        summary.status["scored"] += len(preds)
        laps.lap("score")

        champion = _prediction_frame(vec, preds, "champion", scored_at)
        rows = [champion, _status_frame(status_rows, scored_at)]
        if len(shadow):
            rows.append(_prediction_frame(vec, shadow, "shadow", scored_at))
        table = (
            pd.concat([r for r in rows if len(r)], ignore_index=True)
            if any(len(r) for r in rows)
            else pd.DataFrame(columns=list(PREDICTION_COLUMNS))
        )
        summary.versions.update(champion["model_version"].tolist())

        # Alerts: the policy decides, the service explains. Only for events scored for the
        # first time: a redelivered event's decision was made, and its alert stored, in the
        # same transaction as its first prediction. Deciding again after a restart, with
        # the policy seeded from the stored alerts instead of the history it had then,
        # could raise a second alert in an episode (a late event may have alerted since).
        crossed = champion["alert"].to_numpy(dtype=bool)
        stored = self._already_stored(champion.loc[crossed, "event_id"].tolist())
        replayed = champion["event_id"].isin(stored).to_numpy()
        fresh = champion[~replayed]
        reasons = self.policy.decide(fresh[["patient_id", "ts", "risk", "alert"]])
        raised = fresh[reasons.notna().to_numpy()].assign(reason=reasons.dropna().to_numpy())
        suppressed = int((crossed & ~replayed).sum()) - len(raised)
        summary.suppressed += suppressed
        summary.replayed_alerts += len(stored)
        if len(raised):
            # Explained by the call that scored them where the model's explanations are
            # cheap; otherwise (or for a row it left out) one /explain call for the rest.
            tops = dict(zip(vec["event_id"].tolist(), preds["top_features"].tolist(), strict=True))
            ask = [e for e in raised["event_id"].tolist() if tops[e] is None]
            if ask:
                idx = vec.index[vec["event_id"].isin(set(ask))]
                try:
                    why = self._call(lambda: self.service.explain(vec.loc[idx]))
                except ServiceRejectedError as exc:  # the alert stands, unexplained
                    # Not the refusal's text: it may quote feature values.
                    log.error(
                        "alerts left unexplained: /explain refused them (%s)", type(exc).__name__
                    )
                    why = [{"top_features": []} for _ in idx]
                tops.update(
                    zip(vec.loc[idx, "event_id"], (w["top_features"] for w in why), strict=True)
                )
            raised = raised.assign(top_features=[tops[e] for e in raised["event_id"].tolist()])
        laps.lap("alerts")

        new_alerts, refused_ids = self._store_isolated(
            table, raised, dead, scored_at, self.online.stay_facts()
        )
        if refused_ids:
            gone = champion["event_id"].isin(refused_ids).to_numpy()
            champion, raised = champion[~gone], raised[~raised["event_id"].isin(refused_ids)]
            table = table[~table["event_id"].isin(refused_ids)]
            before = len(dead)
            isolated(refused_ids, "store_rejected", "PostgreSQL refused this event's rows")
            late = dead[before:]
            self._pg(lambda: self._store(_NO_ROWS, _NO_ROWS, late, scored_at))
        laps.lap("store")
        messages = _prediction_messages(champion)
        keys = [k.encode() for k in champion["patient_id"].tolist()]
        alerts = raised[raised["event_id"].isin(new_alerts)]

        def publish() -> None:  # all again after a failure: the topics are at least once
            for key, message in zip(keys, messages, strict=True):
                producer.send(self.topics.predictions, message, key=key)
            for _, a in alerts.iterrows():
                producer.send(self.topics.alerts, _alert_message(a), key=a["patient_id"].encode())
            producer.flush()

        self._kafka(publish)
        laps.lap("publish")
        summary.alerts += len(new_alerts)
        summary.stored += int((table["role"] == "champion").sum()) if len(table) else 0
        summary.shadow_stored += int((table["role"] == "shadow").sum()) if len(table) else 0
        done = time.time()
        sent = champion["kafka_ts"].to_numpy("datetime64[ns]")
        sent = sent[~np.isnat(sent)].astype(np.int64)  # no Kafka timestamp: no latency
        latency_s = done - sent / 1e9
        summary.latency_ms.extend((latency_s * 1000).tolist())
        summary.note_batch(len(recs), laps.steps)
        summary.batches += 1
        self._observe(latency_s, champion, status_rows, shadow, len(new_alerts), repeat, suppressed)
        laps.lap("metrics")

    def _observe(
        self,
        latency_s: np.ndarray,
        champion: pd.DataFrame,
        status_rows: pd.DataFrame,
        shadow: pd.DataFrame,
        alerts: int,
        repeat: np.ndarray,
        suppressed: int,
    ) -> None:
        m = self.metrics
        for value in latency_s:
            m.latency.observe(float(value))
        m.events.labels(outcome="scored").inc(len(champion))
        m.events.labels(outcome="duplicate").inc(int(repeat.sum()))
        for status, n in status_rows["status"].value_counts().items():
            m.events.labels(outcome=str(status)).inc(int(n))
        m.predictions.labels(role="champion").inc(len(champion))
        m.predictions.labels(role="shadow").inc(len(shadow))
        m.alerts.inc(alerts)
        m.suppressed.inc(suppressed)
        if len(champion):
            m.model.clear()
            last = champion.iloc[-1]
            m.model.labels(last["model_name"], last["model_version"]).set(1)
        m.last_batch.set(time.time())

    def _update_isolated(
        self, events: pd.DataFrame, now: pd.Timestamp
    ) -> tuple[pd.DataFrame, list[str]]:
        """``online.update(events)``; should it fail, the events it fails on are isolated
        (bisection) and their ids returned, the others folded in as usual."""
        try:
            return self.online.update(events, now=now), []
        except Exception as exc:
            log.error("online features failed on a batch, isolating: %s", type(exc).__name__)
        iso = isolate(
            range(len(events)),
            lambda part: self.online.update(events.iloc[part], now=now),
            poison=lambda exc: isinstance(exc, Exception),
        )
        parts = [v for _part, v in iso.done if len(v)]
        vec = pd.concat(parts, ignore_index=True) if parts else self.online.update(events[:0])
        return vec, [str(events["event_id"].iloc[i]) for i, _exc in iso.failed]

    def _store_isolated(
        self,
        table: pd.DataFrame,
        raised: pd.DataFrame,
        dead: list[tuple[Record, str, str]],
        seen_at: datetime,
        stays: pd.DataFrame,
    ) -> tuple[set[str], list[str]]:
        """:meth:`_store`, waiting out PostgreSQL outages; rows it refuses (a data error,
        a constraint) are isolated by event, and the rest stored.

        Returns:
            The new alerts' ids, and the events whose rows PostgreSQL refused.
        """
        try:
            return self._pg(lambda: self._store(table, raised, dead, seen_at, stays)), []
        except _POISON_PG as exc:
            log.error("PostgreSQL refused a batch, isolating the events: %s", type(exc).__name__)
        # The batch's own records first (dead letters, stay facts), then event by event.
        self._pg(lambda: self._store(_NO_ROWS, _NO_ROWS, dead, seen_at, stays))
        ids = table["event_id"].unique().tolist() if len(table) else []

        def attempt(part: list[int]) -> set[str]:
            chosen = {ids[i] for i in part}
            rows = table[table["event_id"].isin(chosen)]
            alerts = raised[raised["event_id"].isin(chosen)] if len(raised) else raised
            stored: set[str] = self._pg(lambda: self._store(rows, alerts, [], seen_at))
            return stored

        iso = isolate(range(len(ids)), attempt, poison=lambda e: isinstance(e, _POISON_PG))
        new = set().union(*(alerts for _part, alerts in iso.done))
        return new, [ids[i] for i, _exc in iso.failed]

    def _stays(self, patient_ids: list[str]) -> pd.DataFrame:
        """The stored stay facts (``stay_baselines``) of these patients."""

        def read() -> list[Any]:
            with self._transaction() as conn:
                return conn.execute(
                    "SELECT patient_id, first_minute, base_n, base_s FROM stay_baselines "
                    "WHERE feature_set = %s AND patient_id = ANY(%s)",
                    (FEATURE_SET_VERSION, patient_ids),
                ).fetchall()

        rows = self._pg(read)
        return pd.DataFrame(
            [(p, _epoch_minute(f), np.array(n), np.array(s)) for p, f, n, s in rows],
            columns=["patient_id", "first_minute", "base_n", "base_s"],
        )

    def _already_stored(self, event_ids: list[str]) -> set[str]:
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

        return {r[0] for r in self._pg(read)}

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[psycopg.Connection[Any]]:
        """A transaction on the kept connection; a database error closes it (reopened by
        the next batch, after the restart if the error ends the run)."""
        conn = self._db()
        try:
            with conn.transaction():
                yield conn
        except psycopg.Error:
            self._close_db()
            raise

    def _store(
        self,
        table: pd.DataFrame,
        raised: pd.DataFrame,
        dead: list[tuple[Record, str, str]],
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
                            (pid, FEATURE_SET_VERSION, _minute_ts(first), n.tolist(),
                             s.tolist(), seen_at)
                            for pid, first, n, s in stays.itertuples(index=False)
                        ],
                    )  # fmt: skip
            if len(table):
                copy_table(conn, "_p", _arrow_predictions(table), binary=True)
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

    def _close_db(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # ------------------------------------------------------------------ the loop
    def _clients(self) -> tuple[Consumer, Consumer, Producer]:
        """The group's consumer, the admissions reader and the producer."""
        consumer = self.kafka.consumer(self.cfg.group_id)
        consumer.subscribe([self.topics.vitals])
        adm = self.kafka.consumer(None)
        adm.assign(self.kafka.all_partitions([self.topics.admissions]))
        return consumer, adm, self.kafka.producer()

    def prepare(self) -> None:
        """Migrate the database and, for a new group starting at ``latest``, commit the
        topic's end for it: once per group, before its consumers start (so workers do
        not race each other to it)."""
        self._pg(lambda: migrate(self.settings))
        if self.cfg.new_group_starts_at == "latest":
            self._kafka(self._start_new_group_at_end)

    def run(
        self,
        *,
        bounded: bool = False,
        max_seconds: float | None = None,
        prepared: bool = False,
        parent_pid: int | None = None,
    ) -> ScoreSummary:
        """Consume until stopped (SIGTERM, ``stop``), ``max_seconds``, or idle when
        ``bounded``. A worker (``serving.workers``) runs ``prepared`` by its parent, and
        stops when its parent ``parent_pid`` is gone.

        Raises:
            OutageError: ``bounded``, and a dependency stayed away longer than
                ``scorer.outage_max_wait_s`` (the batch in hand is not committed).
        """
        for outage in self.outages.values():
            outage.max_wait_s = self.cfg.outage_max_wait_s if bounded else None
        summary = self._summary = ScoreSummary()  # started_at: now
        if self.cfg.metrics_port is not None:  # first: outages at start are visible too
            self.metrics.serve(self.settings.serving.host, self.cfg.metrics_port)
        try:
            if not prepared:
                self.prepare()
            self._warm_up()
            consumer, adm, producer = self._kafka(self._clients)
        except BaseException:
            self.metrics.close()
            raise
        t0 = time.monotonic()
        self._consumer = consumer
        idle_since = time.monotonic()
        held: set[TopicPartition] = set()
        lag_stop = threading.Event()
        lag_thread = threading.Thread(
            target=self._watch_lag, args=(lag_stop,), name="lag", daemon=True
        )
        lag_thread.start()
        try:
            while not self.stop.is_set():
                if max_seconds is not None and time.monotonic() - t0 > max_seconds:
                    break
                if parent_pid is not None and os.getppid() != parent_pid:
                    log.warning("the parent process %d is gone: stopping", parent_pid)
                    break
                t_poll = time.perf_counter()
                recs = Polled(
                    b
                    for b in consumer.poll_columns(
                        self.settings.kafka.consumer.max_poll_records, 0.5
                    )
                    if b.topic == self.topics.vitals
                )
                assigned = consumer.assignment()
                if assigned != held:
                    if assigned - held:
                        self._take_over(consumer, adm, assigned - held, summary)
                        idle_since = time.monotonic()
                    held = assigned
                if not self.ready.is_set() and assigned:
                    self.ready.set()
                if not recs:
                    if not assigned:
                        idle_since = time.monotonic()  # still joining the group: not idle
                    elif bounded and time.monotonic() - idle_since > self.cfg.idle_timeout_s:
                        break
                    continue
                if summary.first_record_s is None:
                    summary.first_record_s = time.monotonic() - t0
                self._admissions(adm)  # the admissions up to these vitals (or raced ahead)
                summary.step_seconds["poll"] += time.perf_counter() - t_poll
                try:
                    with self.metrics.batch.time():
                        self.process(recs, producer, summary)
                    t_commit = time.perf_counter()
                    self._kafka(functools.partial(consumer.commit, recs.next_offsets()))
                except CommitFailedError as exc:  # stored already: the new owner re-scores
                    summary.uncommitted_batches += 1
                    log.warning("batch stored but not committed (the group rebalanced): %s", exc)
                except OutageError:
                    raise
                except Exception:
                    if self.stop.is_set():
                        break  # stopped while waiting out an outage: nothing committed
                    raise
                finally:
                    self._resume(consumer)
                summary.step_seconds["commit"] += time.perf_counter() - t_commit
                summary.last_batch_s = time.monotonic() - t0
                idle_since = time.monotonic()
        finally:
            summary.seconds = time.monotonic() - t0
            summary.outages.update({k: o.outages for k, o in self.outages.items() if o.outages})
            self._consumer = None
            lag_stop.set()
            lag_thread.join(timeout=30)
            producer.close()
            consumer.close()
            adm.close()
            self.service.close()
            self._close_db()
            self.metrics.close()
        log.info("scorer stopped", extra={"summary": summary.to_dict()})
        return summary


# --------------------------------------------------------------------------- failures
DEPENDENCIES = ("postgres", "service", "kafka")
# Errors that are the rows' fault (a value PostgreSQL refuses, a constraint they break):
# isolated. Connection errors are outages: waited out.
_POISON_PG = (psycopg.DataError, psycopg.IntegrityError)


def _pg_outage(exc: BaseException) -> bool:
    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:500] if text else type(exc).__name__


def _kafka_times(ms: np.ndarray) -> pd.DatetimeIndex:
    """Kafka timestamps (ms) as UTC times; unknown (out of range, see
    :func:`~stack.contracts.sane_kafka_ts_ms`) as NaT."""
    ms = sane_kafka_ts_ms(np.asarray(ms, dtype=np.int64))
    times = ms.astype("datetime64[ms]")
    times[ms < 0] = np.datetime64("NaT")
    return pd.DatetimeIndex(times).tz_localize("UTC")


# --------------------------------------------------------------------------- frames
_NO_PREDICTIONS = pd.DataFrame(
    {"risk": [], "alert": [], "threshold": [], "model_name": [], "model_version": [], "role": []}
)


_UTC_NS = pd.DatetimeTZDtype("ns", "UTC")
_NO_ROWS = pd.DataFrame()  # nothing of a kind to store


def _prediction_frame(
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


def _status_frame(rows: pd.DataFrame, scored_at: datetime) -> pd.DataFrame:
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


def _arrow_predictions(table: pd.DataFrame) -> pa.Table:
    """The stored columns, typed by :data:`_ARROW` (NaN, NaT and None become nulls)."""
    return pa.table(
        {f.name: pa.array(table[f.name], type=f.type, from_pandas=True) for f in _ARROW},
        schema=_ARROW,
    )


_MESSAGE_COLUMNS = (
    "event_id", "patient_id", "ts", "as_of", "risk", "alert", "threshold", "model_name",
    "model_version", "role",
)  # fmt: skip


def _minute_ts(epoch_minute: int) -> datetime:
    return datetime.fromtimestamp(int(epoch_minute) * 60, UTC)


def _epoch_minute(ts: datetime) -> int:
    return int(ts.timestamp()) // 60


def _iso_ms(col: pd.Series) -> list[str | None]:
    """Times as ISO-8601 UTC text to the millisecond (``2026-11-29T05:00:00.000Z``)."""
    if not isinstance(col.dtype, pd.DatetimeTZDtype):
        col = pd.to_datetime(col, utc=True, cache=False)
    text = np.datetime_as_string(col.to_numpy("datetime64[ms]"), unit="ms").tolist()
    return [None if t == "NaT" else t + "Z" for t in text]


def _prediction_messages(frame: pd.DataFrame) -> list[bytes]:
    """One JSON message per prediction row (built from columns, no per-row pandas)."""
    if frame.empty:
        return []
    cols = [
        _iso_ms(frame[c]) if c in ("ts", "as_of") else frame[c].tolist() for c in _MESSAGE_COLUMNS
    ]
    return [
        orjson.dumps(dict(zip(_MESSAGE_COLUMNS, row, strict=True)))
        for row in zip(*cols, strict=True)
    ]


def _alert_message(a: pd.Series) -> bytes:
    return orjson.dumps(
        {
            "alert_id": a["event_id"], "patient_id": a["patient_id"],
            "ts": pd.Timestamp(a["ts"]).isoformat(), "risk": float(a["risk"]),
            "threshold": float(a["threshold"]), "reason": a["reason"],
            "model_name": a["model_name"], "model_version": a["model_version"],
            "top_features": a["top_features"],
        }
    )  # fmt: skip


class Polled:
    """One poll's records, as the columns of its partition batches laid end to end."""

    def __init__(self, batches: Iterable[PartitionBatch]) -> None:
        self.batches = [b for b in batches if len(b)]
        self.values = [v or b"" for b in self.batches for v in b.values]
        self.timestamps_ms = np.fromiter(
            (t for b in self.batches for t in b.timestamps_ms), np.int64, len(self.values)
        )
        self._ends = np.cumsum([len(b) for b in self.batches])

    def __len__(self) -> int:
        return len(self.values)

    def record(self, i: int) -> Record:
        """The ``i``-th record (for a dead letter: where it was, its key and bytes)."""
        k = int(np.searchsorted(self._ends, i, side="right"))
        b, j = self.batches[k], i - (int(self._ends[k - 1]) if k else 0)
        return Record(b.topic, b.partition, b.offsets[j], b.keys[j], b.values[j],
                      b.timestamps_ms[j])  # fmt: skip

    def next_offsets(self) -> dict[TopicPartition, int]:
        """Per partition, the offset after the last record: what the commit stores."""
        out: dict[TopicPartition, int] = {}
        for b in self.batches:
            tp = TopicPartition(b.topic, b.partition)
            out[tp] = max(out.get(tp, 0), b.offsets[-1] + 1)
        return out


# --------------------------------------------------------------------------- CLI
def main(
    bounded: bool = typer.Option(False, help="Stop after the topic has been idle for a while."),
    max_seconds: float = typer.Option(None, help="Stop after this many seconds."),
    summary_json: str = typer.Option(None, help="Also write the run's summary to this file."),
    workers: int = typer.Option(
        None, min=1, help="Scoring processes in the group (default: scorer.workers)."
    ),
    worker_index: int = typer.Option(None, hidden=True, help="Run as worker i of a parent."),
    parent_pid: int = typer.Option(None, hidden=True, help="A worker's parent process."),
) -> None:
    """Score every vital-sign event from Kafka with the served champion."""
    settings = load_settings()
    configure_logging(settings.logging)
    n = workers or settings.scorer.workers
    if worker_index is None and n > 1:
        from serving.workers import run_workers

        s, codes = run_workers(settings, n, bounded=bounded, max_seconds=max_seconds)
        _report(s, summary_json)
        if any(codes):
            raise typer.Exit(1)
        return
    if worker_index is not None:
        from serving.workers import worker_settings

        settings = worker_settings(settings, worker_index)
    scorer = Scorer(settings)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: scorer.stop.set())
    # Full collections would otherwise walk the startup heap (~0.1 s) in mid-batch.
    log.info("startup heap frozen: %d objects", freeze_startup_heap())
    try:
        s = scorer.run(
            bounded=bounded,
            max_seconds=max_seconds,
            prepared=worker_index is not None,
            parent_pid=parent_pid,
        )
    except OutageError as exc:  # bounded: a dependency stayed away; nothing half-stored
        typer.echo(f"scoring stopped: {exc}", err=True)
        raise typer.Exit(3) from None
    if worker_index is not None:  # for the parent to merge: with the raw latencies
        Path(summary_json).write_text(json.dumps(s.to_dict(latencies=True), default=str))
        return
    _report(s, summary_json)


def _report(s: ScoreSummary, summary_json: str | None) -> None:
    d = s.to_dict()
    if summary_json:
        Path(summary_json).write_text(json.dumps(d, default=str, indent=1))
    typer.echo(
        f"scored {d['scored']:,} events ({d['events_per_s']:,.0f}/s), alerts {d['alerts']:,} "
        f"(suppressed {d['suppressed']:,}), invalid {sum(s.invalid.values()):,}, "
        f"latency p50 {d['latency_p50_ms']:.0f} ms p99 {d['latency_p99_ms']:.0f} ms, "
        f"models {dict(s.versions)}"
    )
