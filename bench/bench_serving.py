"""Serving benchmarks, side by side in one run (issue #6).

HTTP: the same registered model behind BentoML ``/predict`` and behind ``mlflow models
serve`` (``/invocations``), under the same closed-loop load (fixed concurrency; 1-row
and 100-row requests): requests/s, rows/s, p50/p99 latency.

Stream: a ward's events pre-produced to ``vitals.raw``; then, per Kafka client, the raw
consume rate of the same topic (the ceiling; median of three rounds) and the scorer's
sustained events/s from ``vitals.raw`` to stored predictions with one and with two worker
processes (``make score WORKERS=2``), in a subprocess whose RSS is sampled; the
event→prediction latency at a paced offered load (one worker); the scorer's peak RSS
over a 10,000-patient ward; and the history replay of a scorer started on an 8-hour ward
in progress (``serving.replay``).

    python -m bench.bench_serving [--seconds 15 --concurrency 8 --patients 1000 --hours 2]
    python -m bench.bench_serving --parts paced     # one part; the others keep their figures
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import psutil
import typer
import yaml

from bench.common import RESULTS, machine, private_stack, versions, write_result
from features.spec import FEATURE_NAMES
from pipelines.cohort import build_cohort
from pipelines.produce import simulate_to_kafka, with_simulator
from serving.server import ServingProcess
from stack.kafka import KafkaClient
from stack.localstack import endpoints, free_port
from stack.settings import Settings
from training.dataset import labelled_rows
from training.job import run_training
from training.promotion import run_promote


# --------------------------------------------------------------------------- HTTP
async def _load(
    url: str, bodies: list[bytes], seconds: float, concurrency: int
) -> dict[str, float]:
    lat: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:

        async def worker(k: int) -> None:
            nonlocal errors
            i = k
            while time.perf_counter() < stop:
                t = time.perf_counter()
                r = await client.post(
                    url, content=bodies[i % len(bodies)],
                    headers={"content-type": "application/json"},
                )  # fmt: skip
                lat.append(time.perf_counter() - t)
                errors += r.status_code != 200
                i += concurrency

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        wall = time.perf_counter() - t0
    a = np.array(lat) * 1000
    return {
        "requests": len(lat),
        "errors": errors,
        "requests_per_s": len(lat) / wall,
        "p50_ms": float(np.percentile(a, 50)),
        "p99_ms": float(np.percentile(a, 99)),
    }


def _bodies(x: np.ndarray, rows: int, kind: str) -> list[bytes]:
    names = list(FEATURE_NAMES)
    out = []
    for a in range(0, len(x) - rows, max(rows, 1) * 7)[:200]:
        chunk = x[a : a + rows]
        if kind == "bentoml":
            out.append(
                orjson.dumps({"rows": [dict(zip(names, r, strict=True)) for r in chunk.tolist()]})
            )
        else:  # MLflow's pyfunc scoring protocol
            out.append(
                orjson.dumps({"dataframe_split": {"columns": names, "data": chunk.tolist()}})
            )
    return out


def _mlflow_serve(
    settings: Settings, version: str, port: int, log: Path
) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["MLFLOW_TRACKING_URI"] = endpoints(settings).mlflow_uri
    exe = shutil.which("mlflow", path=env["PATH"]) or "mlflow"
    cmd = [exe, "models", "serve", "-m", f"models:/{settings.training.registered_model}/{version}",
           "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ping", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"mlflow models serve did not start; see {log}")


def _kill(proc: subprocess.Popen[bytes]) -> None:
    try:
        parent = psutil.Process(proc.pid)
        for p in [*parent.children(recursive=True), parent]:
            p.kill()
    except psutil.Error:
        pass


# --------------------------------------------------------------------------- stream
def _raw_consume(settings: Settings, topic: str) -> dict[str, float]:
    client = KafkaClient(settings.kafka, endpoints(settings).bootstrap_servers)
    c = client.consumer(None)
    parts = client.all_partitions([topic])
    marks = c.watermarks(parts)
    total = sum(hi - lo for lo, hi in marks.values())
    c.assign(parts)
    for tp, (lo, _hi) in marks.items():
        c.seek(tp, lo)
    n = 0
    t0 = time.perf_counter()
    while n < total:
        n += len(c.poll_batch(settings.kafka.consumer.max_poll_records, 1.0))
    wall = time.perf_counter() - t0
    c.close()
    return {"records": n, "records_per_s": n / wall}


def _scorer_subprocess(settings: Settings, tmp: Path, tag: str, workers: int = 1) -> dict[str, Any]:
    """The scorer as `make score BOUNDED=1 WORKERS=n` runs it, with its RSS sampled (the
    sum over its processes, and the largest one's)."""
    cfg = tmp / f"scorer-{tag}.yaml"
    cfg.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    out = tmp / f"scorer-{tag}.json"
    env = dict(os.environ, VIGIL_CONFIG=str(cfg))
    proc = psutil.Popen([sys.executable, "-m", "serving", "score", "--bounded",
                         "--workers", str(workers), "--summary-json", str(out)],
                        env=env)  # fmt: skip
    peak = peak_one = 0.0
    while proc.poll() is None:
        try:
            rss = [p.memory_info().rss / 2**20 for p in [proc, *proc.children()]]
            peak, peak_one = max(peak, sum(rss)), max(peak_one, *rss)
        except psutil.Error:  # a process ended between listing and reading it
            pass
        time.sleep(0.2)
    if proc.returncode != 0:
        raise RuntimeError(f"scorer failed with {proc.returncode}")
    summary: dict[str, Any] = json.loads(out.read_text())
    summary["peak_rss_mb"] = peak
    summary["peak_rss_mb_largest_process"] = peak_one
    return summary


def _paced_latency(
    settings: Settings, rate: float, seconds: float, tmp: Path, workers: int = 1
) -> dict[str, Any]:
    """Offer ``rate`` events/s of fresh events while the scorer runs; its latency figures."""
    client = KafkaClient(settings.kafka, endpoints(settings).bootstrap_servers)
    # Replay a pre-generated ward with fresh ids, paced, so the scorer sees live traffic.
    src = with_simulator(settings, patients=400, hours=2, seed=77)
    from pipelines.simulator.engine import WardSimulator

    msgs = [(k, v) for chunk in WardSimulator(src.simulator).messages()
            for role, k, v, _ in chunk if role == "vitals"]  # fmt: skip
    # A topic of its own: with Tansu a new group's "latest" is the start of the last
    # batch, so on the stream part's topic it would also score a few hundred old events.
    tag = uuid.uuid4().hex[:6]
    s = _own_topic(settings, f"paced-{tag}")
    topics = s.kafka.topics
    s = s.with_scorer(group_id=f"paced-{tag}", new_group_starts_at="latest", idle_timeout_s=30.0)
    result: dict[str, Any] = {}
    t = threading.Thread(
        target=lambda: result.update(_scorer_subprocess(s, tmp, f"paced-{workers}", workers))
    )
    t.start()
    time.sleep(10)  # the scorer joins its group (well within its idle timeout) first
    producer = client.producer()
    n = int(rate * seconds)
    t0 = time.perf_counter()
    for i in range(n):
        key, value = msgs[i % len(msgs)]
        try:
            event = orjson.loads(value)
            event["event_id"] = str(uuid.uuid4())
        except (orjson.JSONDecodeError, TypeError):
            continue  # the simulator's malformed messages: the dead-letter path, not timed
        producer.send(topics.vitals, orjson.dumps(event), key=key)
        wait = t0 + (i + 1) / rate - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
    producer.flush()
    producer.close()
    offered = n / (time.perf_counter() - t0)
    t.join()
    return {"workers": workers, "offered_per_s": offered, "p50_ms": result["latency_p50_ms"],
            "p99_ms": result["latency_p99_ms"], "scored": result["scored"],
            "batches": result["batches"], "step_seconds": result["step_seconds"],
            "slowest_batches": result["slowest_batches"]}  # fmt: skip


def _own_topic(settings: Settings, tag: str) -> Settings:
    """``settings`` with a ``vitals.raw`` topic of its own (created), so a part scores
    only its own events."""
    topics = settings.kafka.topics.model_copy(
        update={"vitals": f"{settings.kafka.topics.vitals}.{tag}"}
    )
    admin = KafkaClient(settings.kafka, endpoints(settings).bootstrap_servers).admin()
    admin.ensure_topics({topics.vitals: settings.kafka.partitions})
    admin.close()
    return settings.model_copy(
        update={"kafka": settings.kafka.model_copy(update={"topics": topics})}
    )


def _bench_scorer(ward: Settings, kclient: str, tag: str) -> Settings:
    """The ward's settings for a scorer of its own group reading the topic from the start."""
    return ward.model_copy(
        update={
            "kafka": ward.kafka.model_copy(update={"client": kclient}),
            "serving": ward.serving.model_copy(update={"shadow_alias": None}),
        }
    ).with_scorer(
        group_id=f"bench-{tag}-{uuid.uuid4().hex[:6]}",
        new_group_starts_at="earliest",
        idle_timeout_s=5.0,
    )


STREAM_WORKERS = (1, 2)


def _stream_part(ward: Settings, kclient: str, tmp: Path) -> dict[str, Any]:
    """The raw consume rate of the ward's topic (median of three rounds), then the scorer
    with 1 and 2 worker processes, each a group of its own reading the whole topic."""
    s = _bench_scorer(ward, kclient, kclient)
    rounds = [_raw_consume(s, s.kafka.topics.vitals)["records_per_s"] for _ in range(3)]
    raw = float(np.median(rounds))
    out: dict[str, Any] = {"raw_consume_per_s": raw, "raw_consume_rounds": rounds}
    for workers in STREAM_WORKERS:
        sc = _scorer_subprocess(_bench_scorer(ward, kclient, kclient), tmp, kclient, workers)
        # Sustained: first record to last batch. With startup: the whole run but the idle
        # tail (joining the consumer group takes a few seconds).
        rate = sc["drain_events_per_s"]
        busy = sc["seconds"] - s.scorer.idle_timeout_s
        out[f"workers_{workers}"] = {
            "scorer_events_per_s": rate,
            "scorer_events_per_s_with_startup": sc["scored"] / busy if busy > 0 else 0.0,
            "startup_s": sc["first_record_s"],
            "share_of_raw": rate / raw,
            "scored": sc["scored"],
            "per_worker_scored": sc["per_worker_scored"],
            "peak_rss_mb": sc["peak_rss_mb"],
            "peak_rss_mb_largest_process": sc["peak_rss_mb_largest_process"],
            "latency_p50_ms_backlog": sc["latency_p50_ms"],
            "step_seconds": sc["step_seconds"],
        }
    best = max(out[f"workers_{w}"]["scorer_events_per_s"] for w in STREAM_WORKERS)
    if kclient == "confluent":
        out["target"] = ">= 20,000 events/s sustained"
        out["met"] = best >= 20_000
    else:
        out["target"] = ">= 50% of the raw consume rate"
        out["met"] = best >= 0.5 * raw
    return out


def _replay_part(base: Settings, hours: float, tmp: Path) -> dict[str, Any]:
    """A scorer that starts on a ward in progress: a new group at ``latest``, so before
    it scores it replays the last ``warmup_minutes`` of event time unscored
    (``serving.replay``). How long that takes, how much it read, and its RSS."""
    ward = _own_topic(with_simulator(base, patients=1000, hours=hours, seed=13), "replay")
    sent, _ = simulate_to_kafka(ward)
    s = _bench_scorer(ward, "kafka-python", "replay").with_scorer(new_group_starts_at="latest")
    sc = _scorer_subprocess(s, tmp, "replay")
    seconds = sc["step_seconds"]["replay"]
    return {
        "patients": 1000, "hours": hours, "events_on_topic": sent.stats.valid_events,
        "warmup_minutes": s.scorer.warmup_minutes, "replayed_events": sc["replayed_events"],
        "share_of_topic_replayed": sc["replayed_events"] / sent.stats.valid_events,
        "replay_seconds": seconds, "replayed_events_per_s": sc["replayed_events"] / seconds,
        "scored": sc["scored"], "peak_rss_mb": sc["peak_rss_mb"], "client": "kafka-python",
        "when": datetime.now(UTC).isoformat(),  # the part may run alone (--parts replay)
    }  # fmt: skip


# --------------------------------------------------------------------------- main
def main(
    seconds: float = typer.Option(15.0, help="Seconds of load per HTTP case."),
    concurrency: int = typer.Option(8),
    patients: int = typer.Option(1000, help="Stream: ward size (10,000 for the RSS target)."),
    hours: float = typer.Option(2.0),
    paced_rate: float = typer.Option(2000.0),
    rss_hours: float = typer.Option(1.0, help="RSS part: hours of a 10,000-patient ward."),
    replay_hours: float = typer.Option(
        8.0, help="Replay part: hours of a 1,000-patient ward (longer than the window)."
    ),
    parts: str = typer.Option(
        "http,stream,paced,rss,replay", help="Parts to run; the others keep their last figures."
    ),
) -> None:
    pkgs = ("bentoml", "mlflow", "kafka-python", "confluent-kafka")
    old = RESULTS / "serving.json"
    result: dict[str, Any] = json.loads(old.read_text()) if old.exists() else {}
    result.pop("benchmark", None)
    result.pop("when", None)
    result.update({"machine": machine(), "versions": versions(*pkgs)})
    with (
        private_stack(["kafka", "postgres", "mlflow"]) as (stack, _),
        tempfile.TemporaryDirectory() as t,
    ):
        tmp = Path(t)
        base = stack.model_copy(
            update={
                "serving": stack.serving.model_copy(update={"port": free_port()}),
                "training": stack.training.model_copy(
                    update={"families": ("xgboost",), "trials": 2, "timeout_s": None}
                ),
            }
        )
        cohort = build_cohort(
            with_simulator(base, patients=300, hours=24, seed=3,
                           episodes={**base.simulator.episodes.model_dump(),
                                     "deterioration_rate_per_day": 0.5,
                                     "enrichment": 1.0}).simulator,
            base.features,
        )  # fmt: skip
        rows = labelled_rows(cohort.features, cohort.labels)
        trained = run_training(base, rows=rows)
        run_promote(base, rows=rows)
        values = rows[list(FEATURE_NAMES)].to_numpy(dtype=float)
        x = values.astype(object)
        x[np.isnan(values)] = None  # sent as null: not observed

        svc = ServingProcess(base)
        svc.start_or_explain()
        atexit.register(svc.stop)  # also when a part fails: no service is left behind
        if "http" in parts:
            # HTTP, side by side
            mport = free_port()
            mproc = _mlflow_serve(base, trained.model_version, mport, tmp / "mlflow-serve.log")
            http: dict[str, Any] = {}
            try:
                for size in (1, 100):
                    targets = (
                        ("bentoml", f"{svc.url}/predict", "bentoml"),
                        ("mlflow", f"http://127.0.0.1:{mport}/invocations", "mlflow"),
                    )
                    for name, url, kind in targets:
                        bodies = _bodies(x, size, kind)
                        asyncio.run(_load(url, bodies, 3, concurrency))  # warm-up
                        r = asyncio.run(_load(url, bodies, seconds, concurrency))
                        r["rows_per_s"] = r["requests_per_s"] * size
                        http[f"{name}_{size}_rows"] = r
                        typer.echo(f"{name} {size} rows: {r}")
            finally:
                _kill(mproc)
            for size in (1, 100):
                b, m = http[f"bentoml_{size}_rows"], http[f"mlflow_{size}_rows"]
                http[f"ratio_{size}_rows"] = {
                    "throughput_x": b["requests_per_s"] / m["requests_per_s"],
                    "p99_bentoml_over_mlflow": b["p99_ms"] / m["p99_ms"],
                    "target": ">= 3x throughput at no worse p99",
                    "met": b["requests_per_s"] >= 3 * m["requests_per_s"]
                    and b["p99_ms"] <= m["p99_ms"],
                }
            result["http"] = {"concurrency": concurrency, "seconds": seconds, **http}

        ward = with_simulator(base, patients=patients, hours=hours, seed=11)
        stream: dict[str, Any] = dict(result.get("stream", {}))
        if "stream" in parts:
            sent, _ = simulate_to_kafka(ward)
            for kclient in ("kafka-python", "confluent"):
                stream[kclient] = _stream_part(ward, kclient, tmp)
                typer.echo(f"{kclient}: {stream[kclient]}")
            stream["events"] = sent.stats.valid_events
            stream["patients"] = patients
        if "paced" in parts:
            stream["paced"] = _paced_latency(ward, paced_rate, 20.0, tmp)
            stream["paced"]["target"] = "p99 <= 250 ms at 2,000 events/s offered"
            stream["paced"]["met"] = stream["paced"]["p99_ms"] <= 250
            typer.echo(f"paced: {stream['paced']}")
        if "rss" in parts:
            big = _own_topic(with_simulator(base, patients=10_000, hours=rss_hours, seed=12), "rss")
            big_sent, _ = simulate_to_kafka(big)
            sc = _scorer_subprocess(_bench_scorer(big, "kafka-python", "rss"), tmp, "rss")
            stream["rss_10000_patients"] = {
                "patients": 10_000, "hours": rss_hours, "events": big_sent.stats.valid_events,
                "scored": sc["scored"], "peak_rss_mb": sc["peak_rss_mb"],
                "events_per_s": sc["drain_events_per_s"],
                "target": "consumer RSS <= 1.5 GB with 10,000 patients",
                "met": sc["peak_rss_mb"] <= 1536,
            }  # fmt: skip
            typer.echo(f"rss: {stream['rss_10000_patients']}")
        if "replay" in parts:
            stream["replay"] = _replay_part(base, replay_hours, tmp)
            typer.echo(f"replay: {stream['replay']}")
        result["stream"] = stream
        svc.stop()
    path = write_result("serving", result)
    typer.echo(str(path))


if __name__ == "__main__":
    typer.run(main)
