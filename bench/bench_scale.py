"""Scale-out figures: the same work on one instance and on two.

``--part landing``: one ward in Kafka, landed (bounded drain, each lander its own
process with its fetch process) by

- ``all_1``: one lander reading every partition (``landing.assignment: all``, the default);
- ``group_1``: one lander in a consumer group (``assignment: group``): the cost of joining;
- ``group_2``: two landers started together on one group, sharing the partitions.

Each configuration lands the same topics into a lake of its own under a group of its own;
the rounds are interleaved (the machine is shared: only side-by-side figures compare).
``wall_s`` runs from the first process's start to the last one's exit (interpreters,
imports, joining and draining included); ``msgs_per_s`` is messages / ``wall_s``. Every
round checks that each offset landed exactly once.

``--part spark``: one ward landed once, then the ETL and the features (``make etl``,
``make features`` as their own processes) on a Spark standalone cluster started from the
installed pyspark (``stack.sparkcluster``) with one worker and with two (one core and
``--worker-memory`` each), each round on a fresh copy of the raw lake and a fresh
database; ``events_per_s`` is raw events / the stage's wall time (Spark's start-up on
the cluster included).

Usage: ``python -m bench.bench_scale --part landing|spark [--patients N --hours H
--repeat R]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from bench.common import machine, private_stack, versions, write_result
from pipelines.produce import simulate_to_kafka, with_simulator
from stack.catalog import RAW_ADMISSIONS, RAW_DEAD, RAW_OUTCOMES, RAW_VITALS
from stack.lake import Lake
from stack.settings import Settings

CONFIGS = {"all_1": ("all", 1), "group_1": ("group", 1), "group_2": ("group", 2)}


def _landed_once(lake: Lake) -> int:
    """How many offsets landed; raises if one landed twice."""
    seen: Counter[tuple[str, int, int]] = Counter()
    for zone in (RAW_VITALS, RAW_OUTCOMES, RAW_ADMISSIONS, RAW_DEAD):
        t = lake.read_table(zone, ["kafka_topic", "kafka_partition", "kafka_offset"])
        seen.update(zip(*(t[c].to_pylist() for c in t.column_names), strict=True))
    if seen and max(seen.values()) > 1:
        raise RuntimeError("an offset landed twice")
    return len(seen)


def _landers(s: Settings, overlay: Path, assignment: str, n: int) -> dict[str, Any]:
    """``n`` bounded landers of one fresh group and lake, started together."""
    tag = f"{assignment}{n}-{uuid.uuid4().hex[:6]}"
    data = yaml.safe_load(overlay.read_text())
    data["kafka"] = json.loads(s.kafka.model_dump_json())
    data["landing"] = {
        **json.loads(s.landing.model_dump_json()),
        "group_id": f"scale-{tag}",
        "assignment": assignment,
    }
    root = Path(s.resolve(s.lake.root)).parent / f"lake-{tag}"
    data["lake"] = {**json.loads(s.lake.model_dump_json()), "root": str(root)}
    path = overlay.with_name(f"scale-{tag}.yaml")
    path.write_text(yaml.safe_dump(data))
    env = {"VIGIL_CONFIG": str(path), "PATH": "/usr/bin:/bin"}
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen([sys.executable, "-m", "pipelines.landing"], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(n)
    ]  # fmt: skip
    for p in procs:
        _out, err = p.communicate(timeout=900)
        if p.returncode != 0:
            raise RuntimeError(f"a lander failed: {err.decode()[-2000:]}")
    wall = time.perf_counter() - t0
    runs = [json.loads(f.read_text()) for f in (root / "_landing").glob("*/runs/*.json")]
    return {
        "wall_s": wall,
        "landed": _landed_once(Lake(root)),
        "records_per_lander": sorted((r["records"] for r in runs), reverse=True),
        "startup_s": max(r["startup_s"] for r in runs),
    }


def run_landing(patients: int, hours: float, repeat: int) -> dict[str, Any]:
    with private_stack(["kafka"]) as (stack_settings, overlay):
        s = with_simulator(stack_settings, patients=patients, hours=hours, seed=11)
        sent, _ = simulate_to_kafka(s)
        rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in CONFIGS}
        for _ in range(repeat):
            for name, (assignment, n) in CONFIGS.items():
                r = _landers(s, overlay, assignment, n)
                if r["landed"] != sent.messages:
                    raise RuntimeError(f"{name}: landed {r['landed']} of {sent.messages}")
                r["msgs_per_s"] = sent.messages / r["wall_s"]
                rounds[name].append(r)
                print(name, json.dumps(r), flush=True)
    results: dict[str, Any] = {
        name: {
            "wall_s": round(statistics.median(r["wall_s"] for r in rs), 2),
            "msgs_per_s": round(statistics.median(r["msgs_per_s"] for r in rs), 1),
            "startup_s": round(statistics.median(r["startup_s"] for r in rs), 2),
            "records_per_lander": rs[0]["records_per_lander"],
            "rounds": [round(r["wall_s"], 2) for r in rs],
        }
        for name, rs in rounds.items()
    }
    results["group_2_vs_group_1"] = round(
        results["group_2"]["msgs_per_s"] / results["group_1"]["msgs_per_s"], 3
    )
    results["group_1_vs_all_1"] = round(
        results["group_1"]["msgs_per_s"] / results["all_1"]["msgs_per_s"], 3
    )
    return {
        "parameters": {
            "part": "landing",
            "patients": patients,
            "hours": hours,
            "messages": sent.messages,
            "partitions": s.kafka.partitions,
            "repeat": repeat,
            "statistic": "median of interleaved rounds",
            "broker": "Tansu, memory storage, loopback",
        },
        "results": results,
        "versions": versions("kafka-python", "pyarrow"),
        "machine": machine(),
    }


def _stage(module: str, s: Settings, overlay: Path) -> float:
    """Run ``python -m module`` on ``s``; its wall time in seconds."""
    path = overlay.with_name(f"scale-{module}-{uuid.uuid4().hex[:6]}.yaml")
    path.write_text(yaml.safe_dump(json.loads(s.model_dump_json())))
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", module], env={**os.environ, "VIGIL_CONFIG": str(path)},
        capture_output=True, text=True, timeout=3600, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"{module} failed: {done.stderr[-3000:]}")
    return time.perf_counter() - t0


def run_spark(patients: int, hours: float, repeat: int, worker_memory: str) -> dict[str, Any]:
    from pipelines.landing import Lander
    from stack.db import drop_database, recreate_database
    from stack.localstack import endpoints
    from stack.sparkcluster import SparkCluster

    rounds: dict[int, list[dict[str, float]]] = {1: [], 2: []}
    with private_stack(["kafka", "postgres"]) as (stack_settings, overlay):
        s = with_simulator(stack_settings, patients=patients, hours=hours, seed=11)
        sent, _ = simulate_to_kafka(s)
        landed = Lander(s).run(bounded=True)
        raw = Path(s.resolve(s.lake.root)) / "raw"
        events = landed.vitals
        for _ in range(repeat):
            for workers in (1, 2):
                cluster = SparkCluster(s, workers=workers, cores=1, memory=worker_memory)
                info = cluster.start()
                tag = f"w{workers}-{uuid.uuid4().hex[:6]}"
                root = raw.parent.parent / f"lake-{tag}"
                shutil.copytree(raw, root / "raw")
                url = recreate_database(endpoints(s).database_url, f"scale_{tag}")
                run = s.model_copy(update={
                    "lake": s.lake.model_copy(update={"root": str(root)}),
                    "postgres": s.postgres.model_copy(update={"url": url}),
                    "spark": s.spark.model_copy(update={
                        "master": info.master_url, "executor_memory": worker_memory,
                        "shuffle_partitions": 4}),
                    "etl": s.etl.model_copy(update={"reports_dir": root / "reports"}),
                })  # fmt: skip
                try:
                    etl_s = _stage("pipelines.etl", run, overlay)
                    features_s = _stage("pipelines.features", run, overlay)
                finally:
                    cluster.stop()
                    drop_database(url, f"scale_{tag}")
                    shutil.rmtree(root, ignore_errors=True)
                r = {
                    "etl_s": etl_s,
                    "features_s": features_s,
                    "etl_events_per_s": events / etl_s,
                    "features_events_per_s": events / features_s,
                }
                rounds[workers].append(r)
                print(workers, json.dumps(r), flush=True)
    results: dict[str, Any] = {
        f"workers_{w}": {k: round(statistics.median(r[k] for r in rs), 1) for k in rs[0]}
        | {"rounds": [{k: round(v, 1) for k, v in r.items()} for r in rs]}
        for w, rs in rounds.items()
    }
    for stage in ("etl", "features"):
        results[f"{stage}_2_vs_1_workers"] = round(
            results["workers_2"][f"{stage}_events_per_s"]
            / results["workers_1"][f"{stage}_events_per_s"],
            3,
        )
    return {
        "parameters": {
            "part": "spark",
            "patients": patients,
            "hours": hours,
            "messages": sent.messages,
            "vital_events": events,
            "repeat": repeat,
            "worker": f"1 core, {worker_memory}",
            "statistic": "median of interleaved rounds",
            "cluster": "Spark standalone from the installed pyspark, loopback",
        },
        "results": results,
        "versions": versions("pyspark", "great-expectations"),
        "machine": machine(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["landing", "spark"], default="landing")
    ap.add_argument("--patients", type=int, default=300)
    ap.add_argument("--hours", type=float, default=12)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--worker-memory", default="2g")
    args = ap.parse_args()
    if args.part == "spark":
        out = run_spark(args.patients, args.hours, args.repeat, args.worker_memory)
        print(write_result("scale_spark", out))
        return
    out = run_landing(args.patients, args.hours, args.repeat)
    print(write_result("scale_landing", out))


if __name__ == "__main__":
    main()
