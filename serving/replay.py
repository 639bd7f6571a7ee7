"""History replay: the recent events of partitions a scorer takes over, folded in unscored.

The online features (``features.online``) are windows of up to four hours over each
patient's events. A scorer that starts, or a worker that is handed partitions by a
rebalance, would otherwise begin every patient's windows empty: its first hours of
vectors would differ from the batch path's, and risks would be computed on a fraction
of the evidence. So before it scores a partition it has just been given, the scorer
reads that partition's events of the last ``scorer.warmup_minutes`` (event time) before
the group's committed offset, and folds them into its online state without scoring,
storing or publishing anything.

Where to start is found by event time, not by Kafka timestamps: the features are
windows of event time, producers may send history (a backfill, the simulator's
replays) with timestamps of now, and the embedded broker (Tansu) answers a timestamp
lookup (``ListOffsets``) with the partition's first offset whatever the time. The
start is bisected over offsets: each probe reads a few records at an offset and takes
the median of their event times, so one faulty clock does not move it.

The replay restores every windowed feature (the 240-minute window and the 45-minute
lateness bound fit in the default 300 minutes). The stay-level ones (minutes since the
first usable reading, the first-four-hours baseline) need the stay's start, which may be
days back: the scorer stores each stay's first minute and first-hours sums once they are
final (``stay_baselines``, :meth:`features.online.OnlineFeatures.stay_facts`: the newest
minute 240 + 45 past the first), and puts them back after a replay
(:meth:`~features.online.OnlineFeatures.restore_stays`). The 15 minutes of margin make
every stay that began before the cut final somewhere, although a patient's newest
reading may lag the partition's and the bisected start is a few records off.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pandas as pd

from stack.batchvalidate import BatchValidator
from stack.kafka import Consumer, TopicPartition

log = logging.getLogger("vigil.scorer")

PROBE_RECORDS = 64  # records whose median event time stands for an offset
POLL_TIMEOUT_S = 1.0
STALL_S = 10.0  # no record for this long while some are due: the replay gives up


@dataclass
class Replayed:
    """What a replay read: per partition the offsets replayed, and the events folded."""

    ranges: dict[TopicPartition, tuple[int, int]]
    since: dict[TopicPartition, float] = field(default_factory=dict)  # cut, event minutes
    events: int = 0
    seconds: float = 0.0

    @property
    def records(self) -> int:
        return sum(hi - lo for lo, hi in self.ranges.values())


def first_offset_since(
    minute_at: Callable[[int], float | None], lo: int, hi: int, since: float
) -> int:
    """The first offset in ``[lo, hi]`` whose event time is at least ``since``.

    Bisection over offsets with ``minute_at(offset)`` (event minutes; ``None`` when
    nothing readable is there, taken as late enough: more history, never less). Event
    times grow with offsets in a partition up to late and out-of-order arrivals, which
    ``warmup_minutes`` covers with the lateness bound. ``hi`` when none is that late
    (nothing to replay), ``lo`` when all are.
    """
    while lo < hi:
        mid = (lo + hi) // 2
        m = minute_at(mid)
        if m is None or m >= since:
            hi = mid
        else:
            lo = mid + 1
    return lo


def event_minutes(validator: BatchValidator, values: list[bytes | None]) -> npt.NDArray[np.int64]:
    """Epoch minutes of the contract-valid events among ``values``."""
    ts = validator.validate(values).table.column("ts").to_numpy()
    minutes: npt.NDArray[np.int64] = np.asarray(ts, dtype="datetime64[m]").astype(np.int64)
    return minutes


class HistoryReplay:
    """Replays partitions' recent history through ``fold`` (see the module docstring).

    Args:
        consumer: a group-less consumer of the topic, for this replay only.
        validator: the contract's validator (invalid events are skipped, as scoring
            sends them to the dead letters).
        fold: takes the valid events of one poll (``VitalsEvent`` columns) into the
            online state.
        minutes: how much event time to replay before each partition's committed offset.
        poll_records: records per poll.
    """

    def __init__(
        self,
        consumer: Consumer,
        validator: BatchValidator,
        fold: Callable[[pd.DataFrame], None],
        *,
        minutes: float,
        poll_records: int,
    ) -> None:
        self.c = consumer
        self.validator = validator
        self.fold = fold
        self.minutes = minutes
        self.poll_records = poll_records

    def _read(self, tp: TopicPartition, start: int, stop: int, n: int) -> list[bytes | None]:
        """Up to ``n`` values of ``tp`` from ``start`` (before ``stop``)."""
        self.c.assign([tp], {tp: start})
        out: list[bytes | None] = []
        deadline = time.monotonic() + STALL_S
        while len(out) < n and time.monotonic() < deadline:
            for b in self.c.poll_columns(n, POLL_TIMEOUT_S):
                if (b.topic, b.partition) != (tp.topic, tp.partition):
                    continue
                out += [v for o, v in zip(b.offsets, b.values, strict=True) if start <= o < stop]
                if b.offsets and b.offsets[-1] + 1 >= stop:
                    return out[:n]
        return out[:n]

    def _median_minute(self, tp: TopicPartition, offset: int, stop: int) -> float | None:
        minutes = event_minutes(self.validator, self._read(tp, offset, stop, PROBE_RECORDS))
        return float(np.median(minutes)) if len(minutes) else None

    def _start_offset(self, tp: TopicPartition, low: int, committed: int) -> tuple[int, float]:
        """Where ``tp``'s replay starts, and its cut (event minutes): ``minutes`` of event
        time before the events just before ``committed``."""
        if committed <= low:
            return committed, float("nan")
        newest = self._median_minute(tp, max(low, committed - PROBE_RECORDS), committed)
        if newest is None:
            return committed, float("nan")
        since = newest - self.minutes
        start = first_offset_since(
            lambda o: self._median_minute(tp, o, committed), low, committed, since
        )
        return start, since

    def run(self, committed: Mapping[TopicPartition, int | None]) -> Replayed:
        """Replay each partition's history before its ``committed`` offset (``None``:
        the group has not been there; nothing before it to replay)."""
        t0 = time.monotonic()
        held = [tp for tp, off in committed.items() if off is not None]
        if self.minutes <= 0 or not held:
            return Replayed({}, seconds=time.monotonic() - t0)
        ranges: dict[TopicPartition, tuple[int, int]] = {}
        cuts: dict[TopicPartition, float] = {}
        for tp, (low, _high) in self.c.watermarks(held).items():
            end = int(committed[tp] or 0)
            start, since = self._start_offset(tp, low, end)
            if start < end:
                ranges[tp], cuts[tp] = (start, end), since
        done = Replayed(ranges, cuts)
        if ranges:
            done.events = self._replay(ranges)
        done.seconds = time.monotonic() - t0
        return done

    def _replay(self, ranges: dict[TopicPartition, tuple[int, int]]) -> int:
        """Read every range to its end, folding each poll's valid events in."""
        at = {tp: lo for tp, (lo, _hi) in ranges.items()}  # the next offset to fold
        due = {tp: hi for tp, (_lo, hi) in ranges.items()}
        self.c.assign(list(due), at)
        events = 0
        last = time.monotonic()
        while due:
            values: list[bytes | None] = []
            finished = False
            for b in self.c.poll_columns(self.poll_records, POLL_TIMEOUT_S):
                tp = TopicPartition(b.topic, b.partition)
                stop = due.get(tp)
                if stop is None or not b.offsets:
                    continue
                lo = at[tp]
                values += [v for o, v in zip(b.offsets, b.values, strict=True) if lo <= o < stop]
                at[tp] = max(lo, b.offsets[-1] + 1)
                if at[tp] >= stop:
                    del due[tp]
                    finished = True
            if finished and due:  # stop fetching what is done: only the rest, from where it is
                self.c.assign(list(due), {tp: at[tp] for tp in due})
            if values:
                last = time.monotonic()
                valid = self.validator.validate(values).table.to_pandas()
                if len(valid):
                    self.fold(valid.drop(columns="_index"))
                    events += len(valid)
            elif time.monotonic() - last > STALL_S:
                log.warning(
                    "history replay: no records for %.0f s, %d partition(s) not replayed "
                    "to the end", STALL_S, len(due),
                )  # fmt: skip
                break
        return events
