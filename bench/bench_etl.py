"""ETL throughput: raw events/s through validate + clean + resample + both outputs.

The raw lake is written straight from the simulator through the landing's own validator
and table builders (no broker: this measures the ETL, not ingestion), at each size, into
a private stack (PostgreSQL) and lake. Spark runs ``local[2]``.

Reports per size: events/s, seconds per step (GX raw validation; the transform pass: the
shuffle by patient, the pandas work and the tasks' Parquet writes; GX output validation;
publishing the staged files; PostgreSQL COPY), peak RSS of the whole process tree
(the Spark JVM and its Python workers included), and the growth from the smallest to the
largest size (1.0 = linear). Target (issue #3): ≥ 100,000 raw events/s at 10M, ~linear.

``--stages`` also turns the Spark UI on (loopback) and records, per size, the Spark stages
that took half a second or more: wall and CPU seconds, input and shuffle megabytes, and the
call site that ran them (``collect at pipelines/etl/job.py:NNN`` names the step). It costs
a little time itself, so its run is a diagnosis, not the headline figure.

Usage: ``python -m bench.bench_etl [--sizes 1000000 10000000] [--stages]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import threading
import time
import urllib.request
from datetime import UTC, datetime
from typing import Any

import psutil

from bench.common import (
    fresh_lake_and_database,
    machine,
    private_stack,
    versions,
    write_result,
)
from pipelines.etl.job import run_etl
from pipelines.landing import VITALS_SCHEMA, land_rows
from pipelines.produce import with_simulator
from pipelines.simulator.engine import WardSimulator
from stack.batchvalidate import BatchValidator
from stack.catalog import RAW_VITALS, by_hour
from stack.contracts import VitalsEvent
from stack.kafka import PartitionBatch
from stack.lake import Lake
from stack.settings import Settings

EVENTS_PER_PATIENT_DAY = 1440 * 0.86  # readings per patient over 24 h (admissions, outcomes)


def write_raw_lake(s: Settings, events: int) -> int:
    """Simulate about ``events`` raw vitals events and land them as the lander would."""
    patients = math.ceil(events / EVENTS_PER_PATIENT_DAY)
    s = with_simulator(s, patients=patients, hours=24, seed=5, chunk_minutes=60)
    lake = Lake(s.resolve(s.lake.root))
    validator = BatchValidator(VitalsEvent)
    written = 0
    offset = 0
    for n, chunk in enumerate(WardSimulator(s.simulator).messages()):
        vitals = [m for m in chunk if m[0] == "vitals"]
        batch = PartitionBatch(
            "vitals.raw",
            0,
            list(range(offset, offset + len(vitals))),
            [int(1_767_571_200_000 + e * 1000) for _r, _k, _v, e in vitals],
            [k for _r, k, _v, _e in vitals],
            [v for _r, _k, v, _e in vitals],
        )
        offset += len(batch)
        table = land_rows([batch], validator, VITALS_SCHEMA)
        for part, t in by_hour(table, "ts").items():
            lake.write_parquet(t, f"{RAW_VITALS}/{part}/bench-{n:05d}.parquet")
        written += table.num_rows
    return written


def _fresh(base: Settings, size: int) -> Settings:
    """``base`` with a lake and database of this size's own, and its own reports folder."""
    s = fresh_lake_and_database(base, f"bench_etl_{size}")
    return s.model_copy(
        update={"etl": s.etl.model_copy(update={"reports_dir": s.run_path / f"reports-{size}"})}
    )


class PeakRss:
    """Samples the RSS of this process and all its children (Spark JVM, Python workers)."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for p in [me, *me.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    total += p.memory_info().rss
            self.peak = max(self.peak, total)
            time.sleep(0.2)

    def __enter__(self) -> PeakRss:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


def spark_stages(since: datetime, min_wall_s: float = 0.5) -> list[dict[str, Any]]:
    """The active Spark session's completed stages submitted after ``since`` (needs its UI)."""
    from pyspark.sql import SparkSession

    session = SparkSession.getActiveSession()
    url = session.sparkContext.uiWebUrl if session is not None else None
    if not url:
        raise RuntimeError("no Spark UI to ask: run with spark.ui enabled")
    api = f"{url}/api/v1/applications"
    with urllib.request.urlopen(api, timeout=10) as r:
        app = json.load(r)[0]["id"]
    with urllib.request.urlopen(f"{api}/{app}/stages?status=complete", timeout=30) as r:
        stages = json.load(r)

    def when(stamp: str) -> datetime:
        return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%f%Z").replace(tzinfo=UTC)

    out = []
    for st in stages:
        start, end = when(st["submissionTime"]), when(st["completionTime"])
        wall = (end - start).total_seconds()
        if start < since or wall < min_wall_s:
            continue
        out.append(
            {
                "stage": st["stageId"],
                "call_site": st["name"].split("/")[-1] if "/" in st["name"] else st["name"],
                "wall_s": round(wall, 1),
                "cpu_s": round(st["executorCpuTime"] / 1e9, 1),
                "tasks": st["numTasks"],
                "input_mb": round(st["inputBytes"] / 2**20),
                "shuffle_read_mb": round(st["shuffleReadBytes"] / 2**20),
                "shuffle_write_mb": round(st["shuffleWriteBytes"] / 2**20),
            }
        )
    return sorted(out, key=lambda x: x["stage"])


def run(sizes: list[int], *, stages: bool = False) -> dict[str, Any]:
    results: dict[str, Any] = {}
    spark = {"master": "local[2]", "shuffle_partitions": 8, "driver_memory": "6g", "ui": stages}
    # One stack and one Spark session for every size (Spark keeps its scratch space under
    # the run directory); each size gets a lake and a database of its own.
    with private_stack(["postgres"], spark=spark) as (base, _overlay):
        for size in sizes:
            s = _fresh(base, size)
            t0 = time.monotonic()
            raw = write_raw_lake(s, size)
            gen_s = time.monotonic() - t0
            with PeakRss() as rss:
                started = datetime.now(UTC)
                t0 = time.monotonic()
                summary = run_etl(s)
                seconds = time.monotonic() - t0
            if summary.total("raw_rows") != raw:
                raise RuntimeError(f"ETL saw {summary.total('raw_rows')} of {raw} raw rows")
            results[str(size)] = {
                "raw_events": raw,
                "seconds": round(seconds, 1),
                "events_per_s": round(raw / seconds),
                "steps_s": {k: round(v, 1) for k, v in summary.timings.items()},
                "minute_rows": summary.total("minute_rows"),
                "partitions": len(summary.pending),
                "peak_rss_mb": round(rss.peak / 2**20),
                "generate_raw_lake_s": round(gen_s, 1),
            }
            if stages:
                results[str(size)]["spark_stages"] = spark_stages(started)
            print(size, json.dumps(results[str(size)]), flush=True)
    small, large = str(min(sizes)), str(max(sizes))
    growth = (results[large]["seconds"] / results[small]["seconds"]) / (
        results[large]["raw_events"] / results[small]["raw_events"]
    )
    return {
        "target": {"events_per_s_at_largest": ">= 100000", "growth": "~1.0 (linear)"},
        "parameters": {"sizes": sizes, "spark_master": "local[2]", "simulated_hours": 24},
        "results": results,
        "growth_time_per_event_largest_vs_smallest": round(growth, 2),
        "versions": versions("pyspark", "great-expectations", "pandas", "pyarrow", "psycopg"),
        "machine": machine(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--stages", action="store_true", help="Record Spark's stage timings.")
    args = ap.parse_args()
    out = run(args.sizes, stages=args.stages)
    print(write_result("etl", out))


if __name__ == "__main__":
    main()
