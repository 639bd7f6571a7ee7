"""What the scorer does around the scoring itself: joining, taking partitions over, lag.

- :func:`start_new_group_at_end`: a group that never committed starts after the topic's
  last record (``scorer.new_group_starts_at: latest``);
- :class:`Admissions`: the ADT feed (age, sex, SpO2 scale) read by a group-less consumer
  from the start of ``admissions``, so a restarted scorer knows every patient;
- :class:`Takeover`: partitions given to the scorer (its start, a rebalance among workers)
  are taken over before they are scored — the admissions so far, the alert policy read
  again from the alerts table, and the last ``scorer.warmup_minutes`` of their events
  replayed into the online state unscored (``serving.replay``), with the stay facts of
  older stays restored (``stay_baselines``);
- :class:`LagWatcher`: the consumer-lag gauges, measured by a thread of its own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from features.alerts import AlertPolicy
from features.online import OnlineFeatures
from serving.metrics import ScorerMetrics
from serving.replay import HistoryReplay
from serving.store import ScoringStore
from serving.summary import ScoreSummary
from stack.batchvalidate import BatchValidator
from stack.kafka import Consumer, KafkaClient, TopicPartition
from stack.settings import Settings

log = logging.getLogger("vigil.scorer")
ADMISSIONS_WAIT_S = 10.0  # a takeover waits this long at most for the admissions so far
LAG_EVERY_S = 5.0  # consumer lag is measured this often (by a thread: broker round trips)


def start_new_group_at_end(
    kafka: KafkaClient, group_id: str, topic: str, settle_s: float = 5.0
) -> None:
    """A group that has never committed starts at the end of the topic (from now on).

    The end is read, not taken from the high watermarks: Tansu reports a partition's
    high watermark as its last record *batch*'s base offset + 1, so a group started
    there scored up to a batch of old events per partition (the demo saw p99
    latencies of minutes). The records from the reported watermark on are read
    (at most ``settle_s``, in case producers are live) and the group starts after
    the last one.
    """
    c = kafka.consumer(group_id)
    try:
        parts = kafka.all_partitions([topic])
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


def group_lag(kafka: KafkaClient, group_id: str, topic: str) -> int:
    """Events on ``topic`` not yet committed by ``group_id``."""
    c = kafka.consumer(group_id)
    try:
        parts = kafka.all_partitions([topic])
        done = c.committed(parts)
        return sum(hi - (done.get(tp) or lo) for tp, (lo, hi) in c.watermarks(parts).items())
    finally:
        c.close()


class LagWatcher:
    """Sets the lag gauges of the scored topic now and every :data:`LAG_EVERY_S` (best
    effort: metrics must never stop scoring).

    A thread of its own with its own consumer (which reads the group's committed offsets
    but never joins the group): the broker round trips take 0.1-0.4 s, which in the
    scoring loop were a stall of every batch that met them.
    """

    def __init__(self, kafka: KafkaClient, group_id: str, topic: str, metrics: ScorerMetrics):
        self.kafka, self.group_id, self.topic, self.metrics = kafka, group_id, topic, metrics
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lag", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        c: Consumer | None = None
        parts: list[TopicPartition] = []
        while True:
            try:
                if c is None:
                    c = self.kafka.consumer(self.group_id)
                    parts = self.kafka.all_partitions([self.topic])
                done = c.committed(parts)
                for tp, (lo, hi) in c.watermarks(parts).items():
                    lag = hi - (done.get(tp) or lo)
                    self.metrics.lag.labels(topic=tp.topic, partition=str(tp.partition)).set(lag)
            except Exception as exc:
                log.warning("consumer lag not measured: %s", exc)
            if self._stop.wait(LAG_EVERY_S):
                break
        if c is not None:
            c.close()


class Admissions:
    """The admissions topic, read from its start into the online state's admission facts."""

    def __init__(
        self, kafka: KafkaClient, topic: str, validator: BatchValidator, online: OnlineFeatures
    ) -> None:
        self.kafka, self.topic, self.validator, self.online = kafka, topic, validator, online
        self.consumer = kafka.consumer(None)
        self.consumer.assign(kafka.all_partitions([topic]))
        self._next: dict[TopicPartition, int] = {}  # read up to here

    def read(self, *, to_end: bool = False) -> None:
        """Fold in the admissions that have arrived; ``to_end``: every one on the topic
        now, waiting up to :data:`ADMISSIONS_WAIT_S` (a takeover: a fresh consumer's
        first poll returns nothing yet, and the first batch's vectors need the ages,
        sexes and SpO2 scales)."""
        ends: dict[TopicPartition, int] = {}
        if to_end:
            parts = self.kafka.all_partitions([self.topic])
            ends = {tp: hi for tp, (lo, hi) in self.consumer.watermarks(parts).items() if hi > lo}
        deadline = time.monotonic() + ADMISSIONS_WAIT_S
        while True:
            recs = self.consumer.poll_batch(50_000, 0.2 if ends else 0.0)
            for r in recs:
                tp = TopicPartition(r.topic, r.partition)
                self._next[tp] = max(self._next.get(tp, 0), r.offset + 1)
            if recs:
                res = self.validator.validate([r.value or b"" for r in recs])
                if res.table.num_rows:
                    self.online.admit(res.table.to_pandas())
            reached = all(self._next.get(tp, 0) >= hi for tp, hi in ends.items())
            if reached or time.monotonic() > deadline:
                if not reached:
                    log.warning("admissions not read to their end in %.0f s", ADMISSIONS_WAIT_S)
                return

    def close(self) -> None:
        self.consumer.close()


@dataclass
class Takeover:
    """Takes partitions over before they are scored (see the module docstring).

    ``fold`` folds replayed events into the online state (isolating any it fails on);
    ``committed`` reads the group's committed offsets (waiting out broker outages).
    """

    settings: Settings
    kafka: KafkaClient
    online: OnlineFeatures
    validator: BatchValidator
    store: ScoringStore
    policy: AlertPolicy
    metrics: ScorerMetrics
    fold: Callable[[pd.DataFrame, pd.Timestamp], Any]

    def run(
        self,
        gained: set[TopicPartition],
        committed: dict[TopicPartition, int | None],
        admissions: Admissions,
        summary: ScoreSummary,
    ) -> None:
        cfg = self.settings.scorer
        t0 = time.perf_counter()
        admissions.read(to_end=True)
        for pid, ts, risk in self.store.alert_history():
            self.policy.remember(pid, pd.Timestamp(ts), risk)
        now = pd.Timestamp.now(tz="UTC")
        counts = self.online.counts.copy()  # the replay is not this run's traffic
        known = set(self.online.slots)
        replayed: set[str] = set()

        def fold(events: pd.DataFrame) -> None:
            replayed.update(events["patient_id"].unique().tolist())
            # History that cannot be folded in is left out, never a reason not to start.
            self.fold(events, now)

        reader = self.kafka.consumer(None)
        try:
            done = HistoryReplay(
                reader,
                self.validator,
                fold,
                minutes=cfg.warmup_minutes,
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
            restored = self.online.restore_stays(self.store.stays(sorted(replayed)))
        summary.restored_stays += restored
        summary.takeovers += 1
        summary.replayed_events += done.events
        self.metrics.replayed.inc(done.events)
        seconds = time.perf_counter() - t0
        summary.step_seconds["replay"] += seconds
        log.info(
            "took over %d partition(s): replayed %d events (%d records) of the last %d "
            "minutes unscored, restored %d stays' first hours, in %.1f s",
            len(gained), done.events, done.records, cfg.warmup_minutes, restored, seconds,
        )  # fmt: skip
