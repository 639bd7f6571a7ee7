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

Usage: ``python -m bench.bench_scale --part landing [--patients N --hours H --repeat R]``.
"""

from __future__ import annotations

import argparse
import json
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["landing"], default="landing")
    ap.add_argument("--patients", type=int, default=300)
    ap.add_argument("--hours", type=float, default=12)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    out = run_landing(args.patients, args.hours, args.repeat)
    print(write_result("scale_landing", out))


if __name__ == "__main__":
    main()
