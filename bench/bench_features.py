"""Feature throughput: the batch job (Spark) and the online state (the scorer's path).

Batch: the processed zone is written straight from the simulator through the ETL's own
pandas core (``clean_events`` + ``to_minutes``, no Spark: this measures the feature job,
not the ETL) with matching ``etl_partitions`` rows, then ``run_features`` computes
features and labels on ``local[2]``. Reports processed rows/s in, feature rows/s out,
seconds per step and the peak RSS of the process tree.

Online: a simulated ward of 10,000 patients, validated as the scorer would, is fed to
:class:`features.online.OnlineFeatures` in poll batches by a fresh process (so that its
peak RSS is the state's, not the generator's). Reports events/s, per-batch latency
percentiles and the per-event share of it, and peak RSS.

Targets (issue #4): batch ≥ 100,000 rows/s; online ≥ 50,000 events/s on one core with
10k patients; RSS ≤ 1 GB.

Usage: ``python -m bench.bench_features [--rows 1000000 10000000] [--skip-batch]``.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from bench.bench_etl import PeakRss
from bench.common import (
    RESULTS,
    fresh_lake_and_database,
    machine,
    private_stack,
    versions,
    write_result,
)
from features.cleaning import STATUS_OK, clean_events
from features.resample import to_minutes
from pipelines.features.job import run_features
from pipelines.produce import with_simulator
from pipelines.simulator.engine import WardSimulator
from stack.batchvalidate import BatchValidator
from stack.catalog import PROCESSED_VITALS, RAW_ADMISSIONS, RAW_OUTCOMES, by_hour
from stack.contracts import AdmissionEvent, OutcomeEvent, VitalsEvent
from stack.db import migrate, transaction
from stack.lake import Lake
from stack.settings import Settings, load_settings

MINUTES_PER_PATIENT_DAY = 1440 * 0.8  # stays start during the day and end at outcomes


def _simulate(s: Settings) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    vit: list[bytes] = []
    adm: list[bytes] = []
    out: list[bytes] = []
    for chunk in WardSimulator(s.simulator).messages():
        for role, _k, v, _e in chunk:
            (vit if role == "vitals" else adm if role == "admissions" else out).append(v)

    def table(model: Any, values: list[bytes]) -> pd.DataFrame:
        return BatchValidator(model).validate(values).table.drop(["_index"]).to_pandas()

    return table(VitalsEvent, vit), table(AdmissionEvent, adm), table(OutcomeEvent, out)


def write_processed_lake(s: Settings, rows: int, ward_size: int = 1000) -> int:
    """Simulate wards giving about ``rows`` processed minutes; write them as the ETL would.

    Wards of ``ward_size`` patients (seeds 8, 9, …; random patient ids, so no clashes)
    are simulated and processed one at a time, so memory stays bounded at any size.
    """
    patients = math.ceil(rows / MINUTES_PER_PATIENT_DAY)
    lake = Lake(s.resolve(s.lake.root))
    written = 0
    partitions: set[str] = set()
    for ward, start in enumerate(range(0, patients, ward_size)):
        size = min(ward_size, patients - start)
        ws = with_simulator(s, patients=size, hours=24, seed=8 + ward, chunk_minutes=60)
        events, admissions, outcomes = _simulate(ws)
        ev = events.drop_duplicates("event_id").sort_values(["patient_id", "ts", "event_id"])
        del events
        cleaned, _ = clean_events(ev)
        del ev
        minutes = to_minutes(cleaned[cleaned["status"] == STATUS_OK])
        del cleaned
        table = pa.Table.from_pandas(minutes, preserve_index=False)
        for part, t in by_hour(table, "minute").items():
            lake.write_parquet(t, f"{PROCESSED_VITALS}/{part}/ward-{ward:03d}.parquet")
            partitions.add(part)
        written += table.num_rows
        lake.write_parquet(pa.Table.from_pandas(admissions), f"{RAW_ADMISSIONS}/{ward:03d}.parquet")
        if len(outcomes):
            lake.write_parquet(pa.Table.from_pandas(outcomes), f"{RAW_OUTCOMES}/{ward:03d}.parquet")
    migrate(s)
    with transaction(s) as conn:
        for part in sorted(partitions):
            conn.execute(
                "INSERT INTO etl_partitions"
                " VALUES (%s, 'bench', 'bench', now(), 0, 0, 0, 0, 0, 0, 0)",
                (part,),
            )
    return written


def run_batch(sizes: list[int]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    spark = {"master": "local[2]", "shuffle_partitions": 8, "driver_memory": "6g"}
    with private_stack(["postgres"], spark=spark) as (base, _overlay):
        for size in sizes:
            s = fresh_lake_and_database(base, f"bench_features_{size}")
            t0 = time.monotonic()
            rows = write_processed_lake(s, size)
            gen_s = time.monotonic() - t0
            with PeakRss() as rss:
                t0 = time.monotonic()
                summary = run_features(s)
                seconds = time.monotonic() - t0
            results[str(size)] = {
                "processed_rows": rows,
                "feature_rows": summary.feature_rows,
                "patients": summary.patients,
                "seconds": round(seconds, 1),
                "processed_rows_per_s": round(rows / seconds),
                "feature_rows_per_s": round(summary.feature_rows / seconds),
                "steps_s": summary.timings,
                "labels": summary.labels,
                "peak_rss_mb": round(rss.peak / 2**20),
                "generate_processed_lake_s": round(gen_s, 1),
            }
            print(size, json.dumps(results[str(size)]), flush=True)
    return results


# --------------------------------------------------------------------------- online
def _online_worker(path: str, batch: int) -> None:
    """Runs in a fresh process: feed the saved stream to the online state, print JSON."""
    from features.online import OnlineFeatures
    from stack.memory import peak_rss_mb

    events = pd.read_parquet(f"{path}/events.parquet")
    admissions = pd.read_parquet(f"{path}/admissions.parquet")
    base_rss = peak_rss_mb()
    online = OnlineFeatures(capacity=len(admissions))
    online.admit(admissions)
    now = events["ts"].max() + pd.Timedelta(minutes=1)
    lat = []
    t0 = time.perf_counter()
    for a in range(0, len(events), batch):
        t = time.perf_counter()
        online.update(events.iloc[a : a + batch], now=now)
        lat.append(time.perf_counter() - t)
    seconds = time.perf_counter() - t0
    lat_a = np.array(lat)
    print(
        json.dumps(
            {
                "events": len(events),
                "poll_batch": batch,
                "seconds": round(seconds, 2),
                "events_per_s": round(len(events) / seconds),
                "batch_latency_ms": {
                    "p50": round(float(np.percentile(lat_a, 50)) * 1000, 1),
                    "p99": round(float(np.percentile(lat_a, 99)) * 1000, 1),
                },
                "per_event_us_p50": round(float(np.percentile(lat_a, 50)) / batch * 1e6, 1),
                "peak_rss_mb": round(peak_rss_mb()),
                "rss_after_loading_input_mb": round(base_rss),
                "state_mb": round(online.memory_bytes() / 2**20),
                "counts": dict(online.counts),
            }
        )
    )


def run_online(patients: int, hours: float, batches: list[int]) -> dict[str, Any]:
    s = load_settings(environ={})
    s = with_simulator(s, patients=patients, hours=hours, seed=9, chunk_minutes=30)
    events, admissions, _ = _simulate(s)
    out: dict[str, Any] = {"patients": patients, "simulated_hours": hours, "runs": []}
    with tempfile.TemporaryDirectory(prefix="vigil-bench-online-") as tmp:
        events.to_parquet(Path(tmp) / "events.parquet")
        admissions.to_parquet(Path(tmp) / "admissions.parquet")
        for batch in batches:
            proc = subprocess.run(
                [sys.executable, "-m", "bench.bench_features", "--online-worker", tmp,
                 "--batch", str(batch)],
                check=True, capture_output=True, text=True,
            )  # fmt: skip
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            print("online", json.dumps(res), flush=True)
            out["runs"].append(res)
    return out


def _keep_skipped(result: dict[str, Any], sections: tuple[str, ...]) -> None:
    """A section not run this time is carried over from the last result, with its date."""
    path = RESULTS / "features.json"
    last = json.loads(path.read_text()) if path.exists() else {}
    for name in sections:
        if name not in result and name in last:
            result[name] = last[name]
            result[f"{name}_measured_when"] = last.get(f"{name}_measured_when", last["when"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--patients", type=int, default=10_000)
    ap.add_argument("--hours", type=float, default=1.0)
    ap.add_argument("--batches", type=int, nargs="+", default=[10_000, 50_000])
    ap.add_argument("--skip-batch", action="store_true")
    ap.add_argument("--skip-online", action="store_true")
    ap.add_argument("--online-worker", help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=10_000, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.online_worker:
        _online_worker(args.online_worker, args.batch)
        return
    result: dict[str, Any] = {
        "target": {
            "batch_rows_per_s": ">= 100000 (local[2], 10M processed rows)",
            "online_events_per_s": ">= 50000 on one core, 10k patients",
            "online_rss_mb": "<= 1024",
        },
    }
    if not args.skip_online:
        result["online"] = run_online(args.patients, args.hours, args.batches)
    if not args.skip_batch:
        result["batch"] = run_batch(args.rows)
    _keep_skipped(result, ("online", "batch"))
    result["versions"] = versions("pyspark", "pandas", "numpy", "pyarrow")
    result["machine"] = machine()
    print(write_result("features", result))


if __name__ == "__main__":
    main()
