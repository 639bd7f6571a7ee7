"""Chaos benchmark (issue 27): a ward streamed with hostile messages while the parts die.

A private stack (Tansu, PostgreSQL, MLflow) and a BentoML service of a model trained
here; the scorer (``python -m serving score``) and a continuous lander
(``python -m pipelines.landing --continuous``) run as processes of their own under a
small supervisor that restarts whatever exits, and counts every exit it did not cause.
A ward is streamed to ``vitals.raw`` at a steady pace, with a few percent of hostile
messages mixed in (arbitrary bytes, NUL and oversized ids, years 0001 and 2300 and
Kafka timestamps of year 20000, 1e308 readings, a new patient whose every reading is
impossible). Mid-stream, one at a time:

1. PostgreSQL is killed (SIGKILL, with its children) and started again 15 s later;
2. the BentoML service is killed and started again 15 s later;
3. the scorer is killed (SIGKILL) and restarted by the supervisor 2 s later.

Figures (``bench/results/chaos.json``):

- exits that needed a human: a scorer or lander exit the harness did not cause (target 0);
- valid events scored: contract-valid events with a champion prediction (target 100 %);
- duplicates stored: prediction rows beyond one per event and role (target 0);
- messages unaccounted for: offsets of ``vitals.raw`` neither scored nor dead-lettered
  by the scorer, and neither landed nor dead-lettered by the lander (target 0 each);
- recovery time per fault: from the fault's end (the part back, or the scorer restarted)
  until the scorer's committed offsets pass the topic's end as it was at that moment.

    python -m bench.bench_chaos [--patients 150 --hours 3 --stream-seconds 150]
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import psutil
import psycopg
import pyarrow.compute as pc
import typer
import yaml

from bench.common import machine, private_stack, versions, write_result
from pipelines.cohort import build_cohort
from pipelines.produce import with_simulator
from pipelines.simulator.engine import WardSimulator
from serving.server import ServingProcess
from stack.catalog import RAW_DEAD, RAW_VITALS
from stack.kafka import KafkaClient, TopicPartition
from stack.lake import Lake
from stack.localstack import PostgresService, endpoints, ensure_topics, free_port, write_private
from stack.settings import Settings
from training.dataset import labelled_rows
from training.job import run_training
from training.promotion import run_promote

HOSTILE_SHARE = 0.03


# --------------------------------------------------------------------------- hostile input
Hostile = tuple[bytes, bytes | None, int | None, bool]


def hostile_messages(rng: np.random.Generator, n: int) -> list[Hostile]:
    """``n`` hostile messages: (value, key, Kafka timestamp or None, contract-valid?)."""
    out: list[Hostile] = []
    kinds = ["bytes", "nul_id", "long_id", "year_0001", "year_2300", "kafka_20000",
             "reading_1e308", "all_impossible", "unknown_field", "kafka_2300"]  # fmt: skip
    for i in range(n):
        kind = kinds[i % len(kinds)]
        pid = f"pt-chaos-{rng.integers(0, 40)}"
        event: dict[str, Any] = {
            "event_id": str(uuid.uuid4()), "schema_version": 1, "patient_id": pid,
            "device_id": "dev-chaos", "ts": "2026-01-05T01:00:00Z", "heart_rate": 90.0,
            "spo2": 95.0, "resp_rate": 18.0, "temperature": 37.1, "consciousness": "A",
            "on_oxygen": False,
        }  # fmt: skip
        ts_ms: int | None = None
        valid = False
        if kind == "bytes":
            out.append((rng.bytes(int(rng.integers(0, 200))), None, None, False))
            continue
        if kind == "nul_id":
            event["patient_id"] = "pt\u0000chaos"
        elif kind == "long_id":
            event["patient_id"] = "p" * 500
        elif kind == "year_0001":
            event["ts"] = "0001-01-01T00:00:00Z"
        elif kind == "year_2300":
            event["ts"] = "2300-01-01T00:00:00Z"
        elif kind == "kafka_20000":
            ts_ms, valid = 568_024_668_000_000, True
        elif kind == "kafka_2300":
            ts_ms, valid = 10_413_792_000_000, True
        elif kind == "reading_1e308":
            event["heart_rate"] = 1e308
        elif kind == "all_impossible":
            event.update(patient_id=f"pt-new-{uuid.uuid4().hex[:8]}", heart_rate=999999.0,
                         spo2=-5.0, resp_rate=0.0, temperature=1e6, systolic_bp=-1e6,
                         diastolic_bp=1e6)  # fmt: skip
            valid = True
        elif kind == "unknown_field":
            event["pulse"] = 80
        out.append((orjson.dumps(event), event["patient_id"].encode(), ts_ms, valid))
    return out


# --------------------------------------------------------------------------- supervisor
class Supervised:
    """A process restarted whenever it exits; exits the harness did not cause are counted."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.cmd, self.env, self.log = name, cmd, env, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.expected_exit = False
        self.unexpected_exits: list[int] = []
        self.restarts = 0
        self.restart_delay_s = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"supervise-{name}", daemon=True)

    def start(self) -> None:
        self._spawn()
        self._thread.start()

    def _spawn(self) -> None:
        self.proc = subprocess.Popen(
            self.cmd, env=self.env, stdout=self.log.open("ab"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def _watch(self) -> None:
        while not self._stop.is_set():
            assert self.proc is not None
            code = self.proc.poll()
            if code is None:
                self._stop.wait(0.2)
                continue
            if self._stop.is_set():
                return
            if not self.expected_exit:
                self.unexpected_exits.append(code)
            self.expected_exit = False
            time.sleep(self.restart_delay_s)
            self.restarts += 1
            self._spawn()

    def kill(self, restart_after_s: float) -> float:
        """SIGKILL (a crash the harness causes); returns when the restart happened."""
        assert self.proc is not None
        self.expected_exit = True
        self.restart_delay_s = restart_after_s
        restarts = self.restarts
        os.killpg(self.proc.pid, signal.SIGKILL)
        while self.restarts == restarts:
            time.sleep(0.05)
        self.restart_delay_s = 0.0
        return time.monotonic()

    def stop(self) -> None:
        self._stop.set()
        if self.proc is not None and self.proc.poll() is None:
            self.expected_exit = True
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self._thread.join(5)


def _kill_family(pid: int) -> None:
    family = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    for p in family:
        with contextlib.suppress(psutil.Error):
            p.send_signal(signal.SIGKILL)
    psutil.wait_procs(family, timeout=15)


# --------------------------------------------------------------------------- measures
def _committed_past(s: Settings, ends: dict[TopicPartition, int]) -> bool:
    c = KafkaClient(s.kafka, endpoints(s).bootstrap_servers).consumer(s.scorer.group_id)
    try:
        done = c.committed(list(ends))
        return all((done.get(tp) or 0) >= end for tp, end in ends.items())
    finally:
        c.close()


def _ends(s: Settings) -> dict[TopicPartition, int]:
    client = KafkaClient(s.kafka, endpoints(s).bootstrap_servers)
    c = client.consumer(None)
    try:
        return {tp: hi for tp, (_lo, hi) in
                c.watermarks(client.all_partitions([s.kafka.topics.vitals])).items()}  # fmt: skip
    finally:
        c.close()


def _recovery(s: Settings, since: float, timeout: float = 300) -> float | None:
    """Seconds from ``since`` until the scorer has committed everything on the topic then."""
    ends = _ends(s)
    while time.monotonic() - since < timeout:
        with contextlib.suppress(Exception):
            if _committed_past(s, ends):
                return round(time.monotonic() - since, 2)
        time.sleep(0.25)
    return None


def _query(s: Settings, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(endpoints(s).database_url) as conn:
        return conn.execute(sql).fetchall()


# --------------------------------------------------------------------------- run
def main(
    patients: int = typer.Option(150, help="Ward size streamed."),
    hours: float = typer.Option(3.0, help="Simulated hours streamed."),
    stream_seconds: float = typer.Option(150.0, help="Wall time the stream is spread over."),
    outage_seconds: float = typer.Option(15.0, help="How long PostgreSQL and BentoML stay dead."),
    seed: int = typer.Option(77),
) -> None:
    """Stream a ward with hostile messages while PostgreSQL, BentoML and the scorer die."""
    with private_stack(["kafka", "postgres", "mlflow"]) as (stack, _overlay):
        tag = uuid.uuid4().hex[:6]
        base = stack.model_copy(
            update={
                "serving": stack.serving.model_copy(
                    update={"port": free_port(), "reload_interval_s": 5.0}
                ),
                "training": stack.training.model_copy(
                    update={"families": ("logistic_regression",), "trials": 2, "timeout_s": None,
                            "registered_model": f"vigil-chaos-{tag}"}
                ),
                "landing": stack.landing.model_copy(update={"group_id": f"landing-{tag}"}),
            }
        ).with_scorer(group_id=f"scorer-{tag}", new_group_starts_at="earliest",
                      metrics_port=free_port(), backoff_max_s=2.0)  # fmt: skip
        base = with_simulator(base, patients=patients, hours=hours, seed=seed)
        typer.echo("training a model for the service ...")
        cohort = build_cohort(
            with_simulator(base, patients=160, hours=24, seed=3,
                           episodes={**base.simulator.episodes.model_dump(),
                                     "deterioration_rate_per_day": 0.5,
                                     "enrichment": 1.0}).simulator,
            base.features,
        )  # fmt: skip
        rows = labelled_rows(cohort.features, cohort.labels)
        run_training(base, rows=rows)
        if not run_promote(base, rows=rows).promoted:  # the gate judges; chaos needs a champion
            from stack.registry import ModelRegistry

            reg = ModelRegistry(base)
            challenger = reg.by_alias("challenger")
            assert challenger is not None
            reg.promote(challenger.version)
        service = ServingProcess(base)
        service.start_or_explain()
        result = _run(base, service, stream_seconds, outage_seconds, seed)
        service.stop()
    result["parameters"] = {
        "patients": patients, "hours": hours, "stream_seconds": stream_seconds,
        "outage_seconds": outage_seconds, "hostile_share": HOSTILE_SHARE, "seed": seed,
        "kafka_client": base.kafka.client,
    }  # fmt: skip
    result["machine"] = machine()
    result["versions"] = versions("bentoml", "mlflow", "kafka-python", "psycopg")
    path = write_result("chaos", result)
    typer.echo(orjson.dumps(result["figures"], option=orjson.OPT_INDENT_2).decode())
    typer.echo(f"written {path}")


def _run(
    s: Settings, service: ServingProcess, stream_seconds: float, outage_s: float, seed: int
) -> dict[str, Any]:
    run = s.run_path
    config = run / "chaos-settings.yaml"
    write_private(config, yaml.safe_dump(s.model_dump(mode="json")))
    env = {**os.environ, "VIGIL_CONFIG": str(config)}
    ensure_topics(s)
    scorer = Supervised("scorer", [sys.executable, "-m", "serving", "score"], env,
                        run / "logs" / "chaos-scorer.log")  # fmt: skip
    lander = Supervised("lander", [sys.executable, "-m", "pipelines.landing", "--continuous"],
                        env, run / "logs" / "chaos-lander.log")  # fmt: skip
    scorer.start()
    lander.start()

    sim = WardSimulator(s.simulator)
    chunks = list(sim.messages())
    rng = np.random.default_rng(seed)
    producer = KafkaClient(s.kafka, endpoints(s).bootstrap_servers).producer()
    topics = {"vitals": s.kafka.topics.vitals, "outcomes": s.kafka.topics.outcomes,
              "admissions": s.kafka.topics.admissions}  # fmt: skip
    hostile_valid = 0
    hostile_total = 0
    faults: dict[str, dict[str, Any]] = {}
    t0 = time.monotonic()
    pg = PostgresService(s)
    schedule = [(0.2, "postgres"), (0.45, "bentoml"), (0.7, "scorer")]
    fault_threads: list[threading.Thread] = []

    def fault(name: str) -> None:
        started = time.monotonic()
        if name == "postgres":
            pid = pg.pid()
            assert pid is not None
            _kill_family(pid)
            time.sleep(outage_s)
            pg.start()
            back = time.monotonic()
        elif name == "bentoml":
            pid = service.pid()
            assert pid is not None
            _kill_family(pid)
            time.sleep(outage_s)
            service.start_or_explain()
            back = time.monotonic()
        else:
            back = scorer.kill(restart_after_s=2.0)
        faults[name] = {
            "down_s": round(back - started, 2),
            "recovery_s": _recovery(s, back),
        }

    for i, chunk in enumerate(chunks):
        due = t0 + stream_seconds * i / len(chunks)
        while time.monotonic() < due:
            time.sleep(0.05)
        progress = i / len(chunks)
        while schedule and progress >= schedule[0][0]:
            _at, name = schedule.pop(0)
            th = threading.Thread(target=fault, args=(name,), name=f"fault-{name}")
            th.start()
            fault_threads.append(th)
        for role, key, value, _emit in chunk:
            producer.send(topics[role], value, key=key)
        n_vitals = sum(1 for m in chunk if m[0] == "vitals")
        for raw, pkey, ts_ms, valid in hostile_messages(rng, round(n_vitals * HOSTILE_SHARE)):
            producer.send(s.kafka.topics.vitals, raw, key=pkey, timestamp_ms=ts_ms)
            hostile_total += 1
            hostile_valid += valid
        producer.flush()
    producer.close()
    stream_wall = time.monotonic() - t0
    for th in fault_threads:
        th.join()
    final = _recovery(s, time.monotonic(), timeout=600)
    time.sleep(s.landing.flush_seconds + 5)  # the lander's last flush
    scorer.stop()
    lander.stop()
    return _figures(s, sim, hostile_total, hostile_valid, faults, scorer, lander,
                    stream_wall, final)  # fmt: skip


def _figures(
    s: Settings, sim: WardSimulator, hostile_total: int, hostile_valid: int,
    faults: dict[str, Any], scorer: Supervised, lander: Supervised, stream_wall: float,
    final_catch_up: float | None,
) -> dict[str, Any]:  # fmt: skip
    st = sim.stats
    malformed = sum(st.malformed.values())
    sent_vitals = st.vitals_messages + hostile_total
    valid_events = st.valid_events + hostile_valid
    rows, distinct = _query(s, "SELECT count(*), count(DISTINCT event_id) FROM predictions "
                               "WHERE role = 'champion'")[0]  # fmt: skip
    scored = _query(s, "SELECT count(*) FROM predictions WHERE role = 'champion' "
                       "AND status = 'scored'")[0][0]  # fmt: skip
    dead = dict(_query(s, "SELECT reason, count(*) FROM scoring_dead_letters GROUP BY 1"))
    shadow_dupes = _query(s, "SELECT count(*) - count(DISTINCT event_id) FROM predictions "
                             "WHERE role = 'shadow'")[0][0]  # fmt: skip
    # Every offset: a distinct event's champion row, a resend of one, or a dead letter.
    scorer_accounted = distinct + st.duplicates + sum(dead.values())
    lake = Lake(s.resolve(s.lake.root))
    landed = lake.read_table(RAW_VITALS)
    lake_dead = lake.read_table(RAW_DEAD)
    offsets: Counter[tuple[int, int]] = Counter()
    for t in (landed, lake_dead):
        if t.num_rows:
            keep = t.filter(pc.equal(t["kafka_topic"], s.kafka.topics.vitals))
            offsets.update(zip(keep["kafka_partition"].to_pylist(),
                               keep["kafka_offset"].to_pylist(), strict=True))  # fmt: skip
    # The scorer's own account of the outages it waited out (its log: counters reset
    # when it was killed).
    log = scorer.log.read_text(errors="replace") if scorer.log.exists() else ""
    waited = {
        dep: {"retries": log.count(f"{dep} unavailable ("),
              "back_after_s": [float(x) for x in re.findall(rf"{dep} is back after ([0-9.]+) s",
                                                             log)]}
        for dep in ("postgres", "service", "kafka")
    }  # fmt: skip
    figures = {
        "scorer_waited_out": waited,
        "exits_needing_a_human": len(scorer.unexpected_exits) + len(lander.unexpected_exits),
        "valid_events_scored_share": round(distinct / valid_events, 6) if valid_events else None,
        "valid_events": valid_events,
        "valid_events_with_a_prediction": distinct,
        "scored_status_share": round(scored / distinct, 4) if distinct else None,
        "duplicates_stored": int(rows - distinct) + int(shadow_dupes),
        "messages_sent": sent_vitals,
        "unaccounted_scorer": sent_vitals - scorer_accounted,
        "unaccounted_lander": sent_vitals - len(offsets),
        "landed_twice": sum(1 for n in offsets.values() if n > 1),
        "hostile_messages": hostile_total,
        "malformed_by_simulator": malformed,
        "scorer_dead_letters": dead,
        "recovery_s": {k: v["recovery_s"] for k, v in faults.items()},
        "down_s": {k: v["down_s"] for k, v in faults.items()},
        "final_catch_up_s": final_catch_up,
        "stream_wall_s": round(stream_wall, 1),
        "scorer_restarts": scorer.restarts,
        "unexpected_exit_codes": {"scorer": scorer.unexpected_exits,
                                  "lander": lander.unexpected_exits},
    }  # fmt: skip
    targets = {
        "exits_needing_a_human": (0, figures["exits_needing_a_human"] == 0),
        "valid_events_scored_share": (1.0, figures["valid_events_scored_share"] == 1.0),
        "duplicates_stored": (0, figures["duplicates_stored"] == 0),
        "unaccounted": (0, figures["unaccounted_scorer"] == 0
                        and figures["unaccounted_lander"] == 0),
    }  # fmt: skip
    return {
        "figures": figures,
        "targets": {k: {"target": t, "met": met} for k, (t, met) in targets.items()},
    }


if __name__ == "__main__":
    typer.run(main)
