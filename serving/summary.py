"""What a scoring run did: the counts, rates, latencies and where a batch's time went.

:class:`ScoreSummary` is what ``make score`` prints and ``--summary-json`` writes; a
worker's summary carries its raw latencies so that its parent can merge several
(``serving.workers``). :class:`Laps` times the steps of each batch into the summary and
the ``vigil_scorer_step_seconds`` histogram.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from serving.metrics import ScorerMetrics

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


class Laps:
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
