"""The one poll → take → flush → commit loop of every Kafka consumer (lander, scorer).

A consumer here commits an offset only once what it read is durable. The loop owns the
control flow both need — polling, partitions given by the group, stopping (a signal, a
time limit, a bounded run that is idle or drained), committing with outages waited out and
rebalances tolerated — and a :class:`Handler` owns what is done with the records:

- :meth:`Handler.take` a poll's records (the lander buffers them, the scorer scores and
  stores them);
- :meth:`Handler.due` says when what was taken should be made durable, and
  :meth:`Handler.flush` makes it so and returns the offsets that may be committed;
- :meth:`Handler.committed` follows each commit (the lander drops its journal), and
  :meth:`Handler.refused` a commit the group refused because it moved on (a rebalance):
  the records' new owner reads them again from the last commit, so the lander takes its
  files back, and the scorer, whose writes are idempotent, keeps its rows.

:class:`Polled` is one poll's records as columns: no per-message object, Kafka timestamps
sanitised (``stack.contracts.sane_kafka_ts_ms``), any record recoverable by position for a
dead letter.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

import numpy as np
import numpy.typing as npt

from stack.contracts import sane_kafka_ts_ms
from stack.kafka import CommitFailedError, PartitionBatch, Record, TopicPartition, is_broker_outage
from stack.resilience import Outage, OutageError

log = logging.getLogger("vigil.consume")

Offsets = dict[TopicPartition, int]


class Polled:
    """One poll's records, as the columns of its partition batches laid end to end."""

    def __init__(self, batches: Iterable[PartitionBatch]) -> None:
        self.batches = [b for b in batches if len(b)]
        bs = self.batches
        self.values: list[bytes | None] = (
            bs[0].values if len(bs) == 1 else [v for b in bs for v in b.values]
        )
        sizes = [len(b) for b in bs]
        self.partitions: npt.NDArray[np.int32] = np.repeat(
            np.array([b.partition for b in bs], np.int32), sizes
        )
        self.offsets: npt.NDArray[np.int64] = (
            np.concatenate([np.array(b.offsets, np.int64) for b in bs])
            if bs
            else np.empty(0, np.int64)
        )
        # The producer sets them: out of range (year 20000) means unknown (-1).
        self.timestamps_ms: npt.NDArray[np.int64] = sane_kafka_ts_ms(
            np.concatenate([np.array(b.timestamps_ms, np.int64) for b in bs])
            if bs
            else np.empty(0, np.int64)
        )
        self._ends = np.cumsum(sizes)

    def __len__(self) -> int:
        return len(self.values)

    def record(self, i: int) -> Record:
        """The ``i``-th record (for a dead letter: where it was, its key and bytes)."""
        k = int(np.searchsorted(self._ends, i, side="right"))
        b, j = self.batches[k], i - (int(self._ends[k - 1]) if k else 0)
        return Record(b.topic, b.partition, b.offsets[j], b.keys[j], b.values[j],
                      int(self.timestamps_ms[i]))  # fmt: skip

    def next_offsets(self) -> Offsets:
        """Per partition, the offset after the last record: what a commit stores."""
        out: Offsets = {}
        for b in self.batches:
            tp = TopicPartition(b.topic, b.partition)
            out[tp] = max(out.get(tp, 0), b.offsets[-1] + 1)
        return out

    def by_topic(self) -> dict[str, Polled]:
        """The records of each topic apart (a lander reads several)."""
        topics: dict[str, list[PartitionBatch]] = {}
        for b in self.batches:
            topics.setdefault(b.topic, []).append(b)
        return {t: Polled(bs) for t, bs in topics.items()}


class Handler(Protocol):
    def assigned(self, gained: set[TopicPartition]) -> None:
        """Partitions this consumer was given (at its start, by a rebalance)."""

    def take(self, polled: Polled) -> None:
        """Do what the consumer does with a poll's records."""

    def due(self) -> bool:
        """Whether what was taken should be made durable now."""

    def flush(self) -> Offsets:
        """Make what was taken durable; the offsets that may now be committed."""

    def committed(self, offsets: Offsets) -> None:
        """After ``offsets`` were committed."""

    def refused(self, offsets: Offsets) -> None:
        """After the group refused to commit ``offsets`` (it rebalanced meanwhile)."""


def _ended(
    t0: float,
    max_seconds: float | None,
    keep_going: Callable[[], bool] | None,
    drained: Callable[[], bool] | None,
) -> str | None:
    """Why a loop should stop before its next poll, if it should."""
    if max_seconds is not None and time.monotonic() - t0 > max_seconds:
        return "max_seconds"
    if keep_going is not None and not keep_going():
        return "ended"
    if drained is not None and drained():
        return "drained"
    return None


class ConsumeLoop:
    """Polls until stopped; commits only what the handler made durable.

    Args:
        poll: one poll's batches (waiting up to its own timeout when there is none).
        commit: stores offsets for the group; a rebalance raises ``CommitFailedError``.
        kafka: waits out broker outages around commits.
        stop: set to stop (a signal); ends a wait for an outage too.
        assignment: the partitions held now, for a group member (None: assigned by hand).
    """

    def __init__(
        self,
        *,
        poll: Callable[[], list[PartitionBatch]],
        commit: Callable[[Mapping[TopicPartition, int]], None],
        kafka: Outage,
        stop: threading.Event,
        assignment: Callable[[], set[TopicPartition]] | None = None,
    ) -> None:
        self._poll = poll
        self._commit = commit
        self._kafka = kafka
        self.stop = stop
        self._assignment = assignment
        self.held: set[TopicPartition] = set()
        self.first_record_s: float | None = None
        self.uncommitted = 0  # flushes whose commit a rebalance refused
        self.last_poll_s = 0.0  # how long the last poll took (a handler's step timing)

    def run(
        self,
        handler: Handler,
        *,
        idle_timeout_s: float | None,
        max_seconds: float | None = None,
        drained: Callable[[], bool] | None = None,
        keep_going: Callable[[], bool] | None = None,
    ) -> str:
        """Consume until a reason to stop; returns it (``stopped``, ``max_seconds``,
        ``idle``, ``drained``, ``ended``).

        Args:
            idle_timeout_s: stop after this long without records while holding partitions
                (a bounded run); None: never for idleness.
            drained: true once a bounded run has read all it meant to.
            keep_going: false to stop (e.g. a worker whose parent is gone).

        Raises:
            OutageError: a bounded wait for the broker (or the handler's dependency) ran
                out; nothing was committed that is not durable.
        """
        t0 = last_data = time.monotonic()
        reason = "stopped"
        while not self.stop.is_set():
            ended = _ended(t0, max_seconds, keep_going, drained)
            if ended is not None:
                reason = ended
                break
            t_poll = time.perf_counter()
            polled = Polled(self._poll())
            self.last_poll_s = time.perf_counter() - t_poll
            if self._assignment is not None:
                held = self._assignment()
                if held - self.held:
                    handler.assigned(held - self.held)
                    last_data = time.monotonic()
                self.held = held
                if not held:
                    last_data = time.monotonic()  # still joining the group: not idle
            if len(polled):
                if self.first_record_s is None:
                    self.first_record_s = time.monotonic() - t0
                if not self._step(handler.take, polled):
                    return "stopped"
                last_data = time.monotonic()
            elif idle_timeout_s is not None and time.monotonic() - last_data > idle_timeout_s:
                reason = "idle"
                break
            if handler.due() and not self._step(self._flush_and_commit, handler):
                return "stopped"
        if not self._step(self._flush_and_commit, handler):
            return "stopped"
        return reason

    def _flush_and_commit(self, handler: Handler) -> None:
        offsets = handler.flush()
        if not offsets:
            return
        try:
            self._kafka.call(lambda: self._commit(offsets), retry_on=is_broker_outage)
        except CommitFailedError as exc:  # the new owner reads these records again
            self.uncommitted += 1
            log.warning("batch stored but not committed (the group rebalanced): %s", exc)
            handler.refused(offsets)
            return
        handler.committed(offsets)

    def _step(self, fn: Callable[..., None], arg: object) -> bool:
        """``fn(arg)``; False when it failed because the consumer was asked to stop while
        waiting out an outage (nothing of that step was committed)."""
        try:
            fn(arg)
        except OutageError:
            raise
        except Exception:
            if self.stop.is_set():
                return False
            raise
        return True
