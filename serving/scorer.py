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
4. passes the alert policy (``features.alerts``), events scored for the first time only (a
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

The parts: this module is the batch (:meth:`Scorer.process`, step by step) and the run;
``stack.consume`` the poll → take → flush → commit loop; ``serving.takeover`` joining,
taking over, admissions and lag; ``serving.store`` PostgreSQL; ``serving.messages`` the
published messages; ``serving.summary`` what a run did; ``serving.score_cli`` the command.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
import pandas as pd

from features.alerts import AlertPolicy
from features.online import OnlineFeatures
from serving.batch import BatchScorer
from serving.client import (
    ServiceClient,
    ServiceRejectedError,
    ServiceUnavailableError,
    feature_matrix,
)
from serving.metrics import ScorerMetrics
from serving.store import (
    ScoringStore,
    is_outage,
)
from serving.summary import ScoreSummary
from serving.takeover import Admissions, LagWatcher, Takeover, group_lag, start_new_group_at_end
from stack.batchvalidate import BatchValidator
from stack.consume import ConsumeLoop, Offsets, Polled
from stack.contracts import AdmissionEvent, VitalsEvent
from stack.db import migrate
from stack.kafka import Consumer, KafkaClient, Producer, TopicPartition, is_broker_outage
from stack.localstack import endpoints
from stack.resilience import Outage
from stack.settings import Settings

log = logging.getLogger("vigil.scorer")
DEPENDENCIES = ("postgres", "service", "kafka")


def service_url(settings: Settings) -> str:
    s = settings.serving
    return s.url or f"http://{s.host}:{s.port}"


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
        self.ready = threading.Event()  # set once the consumer holds its partitions
        self._shadow_checked = 0.0
        self._shadow = True
        self._consumer: Consumer | None = None  # the group's consumer while running
        self._paused = False
        self._summary: ScoreSummary | None = None  # the run's, for the outage counters
        self.outages = {name: self._outage(name) for name in DEPENDENCIES}
        self.store = ScoringStore(settings, self.outages["postgres"])
        self.batch = BatchScorer(
            settings, online=self.online, policy=self.policy, service=self.service,
            validator=self.validator, store=self.store, metrics=self.metrics,
            outages=self.outages,
        )  # fmt: skip

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

    def _kafka(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` (broker work), waiting out broker outages."""
        return self.outages["kafka"].call(fn, retry_on=is_broker_outage)

    # ------------------------------------------------------------------ startup
    def _online_state(self) -> OnlineFeatures:
        return OnlineFeatures(
            lateness_minutes=self.settings.features.lateness_minutes,
            max_future_minutes=int(self.settings.etl.max_future_minutes),
        )

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

    def lag(self) -> int:
        """Events on ``vitals.raw`` not yet committed by this scorer's group."""
        return group_lag(self.kafka, self.cfg.group_id, self.topics.vitals)

    # ------------------------------------------------------------------ one batch
    def process(self, recs: Polled, producer: Producer, summary: ScoreSummary) -> None:
        """Score one poll (``serving.batch``; not the commit)."""
        self.batch.process(recs, producer, summary)

    def _score(self, x: np.ndarray) -> tuple[pd.DataFrame, list[tuple[int, str]]]:
        """The champion's predictions of ``x`` and the rows it refused (``serving.batch``)."""
        preds, refused = self.batch._score(x)
        return preds, refused

    # ------------------------------------------------------------------ the run
    def prepare(self) -> None:
        """Migrate the database and, for a new group starting at ``latest``, commit the
        topic's end for it: once per group, before its consumers start (so workers do
        not race each other to it)."""
        self.outages["postgres"].call(lambda: migrate(self.settings), retry_on=_pg_outage)
        if self.cfg.new_group_starts_at == "latest":
            self._kafka(
                lambda: start_new_group_at_end(self.kafka, self.cfg.group_id, self.topics.vitals)
            )

    def _clients(self) -> tuple[Consumer, Admissions, Producer]:
        """The group's consumer, the admissions reader and the producer."""
        consumer = self.kafka.consumer(self.cfg.group_id)
        consumer.subscribe([self.topics.vitals])
        admissions = Admissions(self.kafka, self.topics.admissions, self.adm_validator,
                                self.online)  # fmt: skip
        return consumer, admissions, self.kafka.producer()

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
            consumer, admissions, producer = self._kafka(self._clients)
        except BaseException:
            self.metrics.close()
            raise
        t0 = time.monotonic()
        self._consumer = consumer
        lag = LagWatcher(self.kafka, self.cfg.group_id, self.topics.vitals, self.metrics)
        lag.start()
        max_records, vitals = self.settings.kafka.consumer.max_poll_records, self.topics.vitals
        loop = ConsumeLoop(
            poll=lambda: [
                b for b in consumer.poll_columns(max_records, 0.5) if b.topic == vitals
            ],
            commit=consumer.commit,
            kafka=self.outages["kafka"],
            stop=self.stop,
            assignment=consumer.assignment,
        )  # fmt: skip
        handler = _Scoring(self, consumer, admissions, producer, summary, loop, t0)

        def parent_alive() -> bool:
            if parent_pid is not None and os.getppid() != parent_pid:
                log.warning("the parent process %d is gone: stopping", parent_pid)
                return False
            return True

        try:
            loop.run(
                handler,
                idle_timeout_s=self.cfg.idle_timeout_s if bounded else None,
                max_seconds=max_seconds,
                keep_going=parent_alive,
            )
        finally:
            summary.seconds = time.monotonic() - t0
            summary.uncommitted_batches = loop.uncommitted
            summary.outages.update({k: o.outages for k, o in self.outages.items() if o.outages})
            self._consumer = None
            lag.stop()
            producer.close()
            consumer.close()
            admissions.close()
            self.service.close()
            self.store.close()
            self.metrics.close()
        log.info("scorer stopped", extra={"summary": summary.to_dict()})
        return summary


class _Scoring:
    """The scorer as the consume loop's handler: every poll is scored, stored and
    published in ``take`` and committed right after."""

    def __init__(
        self,
        scorer: Scorer,
        consumer: Consumer,
        admissions: Admissions,
        producer: Producer,
        summary: ScoreSummary,
        loop: ConsumeLoop,
        t0: float,
    ) -> None:
        self.scorer, self.consumer, self.admissions = scorer, consumer, admissions
        self.producer, self.summary, self.loop, self.t0 = producer, summary, loop, t0
        self.pending: Offsets = {}
        s = scorer
        self.takeover = Takeover(
            s.settings, s.kafka, s.online, s.validator, s.store, s.policy, s.metrics,
            fold=s.batch.fold_isolated,
        )  # fmt: skip

    def assigned(self, gained: set[TopicPartition]) -> None:
        ordered = sorted(gained, key=lambda tp: (tp.topic, tp.partition))
        committed = self.scorer._kafka(lambda: self.consumer.committed(ordered))
        self.takeover.run(gained, committed, self.admissions, self.summary)
        self.scorer.ready.set()

    def take(self, polled: Polled) -> None:
        if self.summary.first_record_s is None:
            self.summary.first_record_s = time.monotonic() - self.t0
        t_poll = time.perf_counter()
        self.admissions.read()  # the admissions up to these vitals (or raced ahead)
        self.summary.step_seconds["poll"] += self.loop.last_poll_s + time.perf_counter() - t_poll
        try:
            with self.scorer.metrics.batch.time():
                self.scorer.process(polled, self.producer, self.summary)
        finally:
            self.scorer._resume(self.consumer)
        self.pending = polled.next_offsets()

    def due(self) -> bool:
        return bool(self.pending)

    def flush(self) -> Offsets:
        self._commit_started = time.perf_counter()
        pending, self.pending = self.pending, {}
        return pending

    def committed(self, offsets: Offsets) -> None:
        self.summary.step_seconds["commit"] += time.perf_counter() - self._commit_started
        self.summary.last_batch_s = time.monotonic() - self.t0

    def refused(self, offsets: Offsets) -> None:
        """Stored but not committed: the new owner scores these again, and stores nothing
        twice (rows are keyed; an alert is published only for a new row)."""
        self.committed(offsets)


# --------------------------------------------------------------------------- helpers
def _pg_outage(exc: BaseException) -> bool:
    return is_outage(exc)
