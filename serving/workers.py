"""``make score WORKERS=N``: N scoring consumers of one consumer group, as processes.

One scorer is one Python process, so one core: its validation, online features, request
building and publishing take turns under one interpreter lock. Kafka shares a group's
partitions out among its members, so N worker processes score in parallel, each holding
the online state of its own partitions' patients (a patient's events are keyed to one
partition, so every patient has exactly one worker).

The parent prepares the group once (migrations; for a new group that starts at
``latest``, the topic's end committed for it), then starts the workers
(``python -m serving score --worker-index i --parent-pid P``), forwards SIGTERM and
SIGINT to them, waits, and merges their summaries: counts added, latency percentiles
over all their events, the sustained rate from the first record any worker saw to the
last batch any worker finished. Worker ``i`` serves its metrics on
``scorer.metrics_port + i``. A worker stops by itself when its parent is gone.

A worker that fails leaves its partitions to the others (the group rebalances; what it
had not committed is scored again, and stored once). The others go on; the parent
reports the failure and exits non-zero when they are done. A worker that takes over a
partition has no online state for its patients: their features start from the events it
sees, as after any restart.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

from serving.scorer import Scorer
from serving.summary import SLOWEST_KEPT, ScoreSummary
from stack.settings import REPO_ROOT, Settings

log = logging.getLogger("vigil.scorer")


def worker_settings(settings: Settings, index: int) -> Settings:
    """Worker ``index``'s settings: its own metrics port, the rest shared."""
    port = settings.scorer.metrics_port
    if port is None:
        return settings
    return settings.with_scorer(metrics_port=port + index)


def run_workers(
    settings: Settings, workers: int, *, bounded: bool, max_seconds: float | None
) -> tuple[ScoreSummary, list[int]]:
    """Run ``workers`` scoring processes in the group to the end; their merged summary
    and exit codes."""
    Scorer(settings).prepare()
    started_at = time.time()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory(prefix="vigil-scorer-") as tmp:
        outs = [Path(tmp) / f"worker-{i}.json" for i in range(workers)]
        procs = []
        for i, out in enumerate(outs):
            cmd = [sys.executable, "-m", "serving", "score", "--worker-index", str(i),
                   "--parent-pid", str(os.getpid()), "--summary-json", str(out)]  # fmt: skip
            if bounded:
                cmd.append("--bounded")
            if max_seconds is not None:
                cmd += ["--max-seconds", str(max_seconds)]
            procs.append(subprocess.Popen(cmd, env=env, cwd=REPO_ROOT))

        def forward(signum: int, _frame: Any) -> None:
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)

        previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            codes = [p.wait() for p in procs]
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        for i, code in enumerate(codes):
            if code != 0:
                log.error("scorer worker %d exited with code %d", i, code)
        parts = [json.loads(out.read_text()) for out in outs if out.exists()]
    return merge(parts, started_at), codes


_ADDED = {f.name for f in fields(ScoreSummary) if f.type in ("int", int)}
_COUNTED = ("invalid", "isolated", "outages", "status", "versions", "step_seconds")


def merge(parts: list[dict[str, Any]], started_at: float) -> ScoreSummary:
    """One summary of workers' summaries (``ScoreSummary.to_dict(latencies=True)``),
    its times counted from ``started_at`` (epoch seconds). ``step_seconds`` add up:
    they are worker-seconds."""
    s = ScoreSummary(started_at=started_at)
    for i, d in enumerate(parts):
        for name in _ADDED:
            setattr(s, name, getattr(s, name) + d[name])
        for name in _COUNTED:
            counter = getattr(s, name)
            for k, v in d[name].items():
                counter[k] += v
        s.per_worker_scored.append(d["scored"])
        s.latency_ms.extend(d["latency_ms"])
        s.slowest_batches += [{**b, "worker": i} for b in d["slowest_batches"]]
    s.slowest_batches.sort(key=lambda b: -b["seconds"])
    del s.slowest_batches[SLOWEST_KEPT:]

    def at(key: str) -> list[float]:
        return [d["started_at"] + d[key] - started_at for d in parts if d[key] is not None]

    s.seconds = max(at("seconds"), default=0.0)
    s.first_record_s = min(at("first_record_s"), default=None)
    s.last_batch_s = max(at("last_batch_s"), default=None)
    return s
