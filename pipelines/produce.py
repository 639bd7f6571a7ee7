"""Simulator → Kafka (``make simulate``).

Backfill mode sends simulated time as fast as the broker takes it; live mode paces the
stream to the wall clock (``speedup`` simulated seconds per second). Vitals, admissions
(the ADT feed) and outcomes go to their topics, keyed by patient so that each patient's
messages stay in order within a partition.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import queue
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from pipelines.simulator.engine import Message, SimStats, WardSimulator, summarize_population
from stack.gctune import throughput_gc
from stack.kafka import KafkaClient
from stack.lake import Lake
from stack.localstack import endpoints, ensure_topics
from stack.logs import configure_logging
from stack.settings import Settings, SimulatorSettings, load_settings

log = logging.getLogger("vigil.produce")


@dataclass
class ProduceSummary:
    stats: SimStats
    population: dict[str, Any]
    messages: int = 0
    seconds: float = 0.0
    topics: dict[str, str] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "seconds": round(self.seconds, 3),
            "messages_per_s": round(self.rate, 1),
            "topics": self.topics,
            "sent": self.stats.to_dict(),
            "population": self.population,
        }


def with_simulator(settings: Settings, **overrides: Any) -> Settings:
    """Settings with simulator keys replaced (validated; ``None`` values are ignored)."""
    changes = {k: v for k, v in overrides.items() if v is not None}
    if not changes:
        return settings
    sim = SimulatorSettings.model_validate({**settings.simulator.model_dump(), **changes})
    return settings.model_copy(update={"simulator": sim})


_AHEAD_CHUNKS = 4  # chunks the generating process may run ahead of the producer


def _generate(sim: WardSimulator, out: Any) -> None:
    """The child process: every chunk, then what the simulator counted (or the error)."""
    try:
        for chunk in sim.messages():
            out.put(("chunk", chunk))
        out.put(("done", (sim.stats, sim.fault_log)))
    except BaseException:  # everything, reported to the parent
        out.put(("error", traceback.format_exc()))


@contextmanager
def chunks_ahead(sim: WardSimulator) -> Iterator[Iterator[list[Message]]]:
    """``sim.messages()``, generated in a forked child process a few chunks ahead.

    On two cores the simulator (~6 µs a message) and the producer then run side by side
    instead of taking turns. The stream is the same (same seed, same order); once it has
    been read to the end, ``sim.stats`` and ``sim.fault_log`` hold what the child counted,
    as if it had been generated here. The child is forked on entry (so before the Kafka
    client's threads exist, when entered first) and stopped on exit, whatever happened.
    Where ``fork`` is not the platform's safe default (not Linux), the iterator is
    ``sim.messages()`` itself.

    Raises (while iterating):
        RuntimeError: the child failed (its traceback is in the message) or died.
    """
    if not sys.platform.startswith("linux"):
        yield sim.messages()
        return
    ctx = mp.get_context("fork")
    out = ctx.Queue(maxsize=_AHEAD_CHUNKS)
    child = ctx.Process(target=_generate, args=(sim, out), name="vigil-simulator", daemon=True)
    child.start()
    try:
        yield _drain(sim, child, out)
    finally:
        if child.is_alive():
            child.terminate()
        child.join(timeout=10)
        out.close()


def _drain(sim: WardSimulator, child: Any, out: Any) -> Iterator[list[Message]]:
    while True:
        try:
            kind, payload = out.get(timeout=1.0)
        except queue.Empty:
            if not child.is_alive():
                raise RuntimeError(f"simulator process died (exit code {child.exitcode})") from None
            continue
        if kind == "chunk":
            yield payload
        elif kind == "done":
            stats, fault_log = payload
            sim.stats.__dict__.update(stats.__dict__)
            sim.fault_log.update(fault_log)
            return
        else:
            raise RuntimeError(f"simulator process failed:\n{payload}")


def simulate_to_kafka(
    settings: Settings,
    *,
    client: KafkaClient | None = None,
    progress: bool = False,
    record_faults: bool = False,
) -> tuple[ProduceSummary, WardSimulator]:
    """Run the simulator and send every message; returns the summary and the simulator.

    The simulator's ``stats`` are what was sent: the ground truth the landing reconciles
    against.
    """
    cfg = settings.simulator
    client = client or KafkaClient(settings.kafka, endpoints(settings).bootstrap_servers)
    ensure_topics(settings)
    t = settings.kafka.topics
    topics = {"vitals": t.vitals, "outcomes": t.outcomes, "admissions": t.admissions}
    sim = WardSimulator(cfg, record_faults=record_faults)
    summary = ProduceSummary(stats=sim.stats, population=summarize_population(sim.population))
    summary.topics = topics
    live = cfg.mode == "live"
    hours = cfg.hours
    bar = Progress(
        TextColumn("[bold]simulate[/] {task.description}"),
        BarColumn(),
        TextColumn("{task.fields[msgs]:,} msgs"),
        TimeRemainingColumn(),
        disable=not progress,
    )
    with ExitStack() as scope:
        # Live mode is paced by the clock: generating ahead would gain nothing there. The
        # generating child is forked before the producer's threads exist.
        chunks = sim.messages() if live else scope.enter_context(chunks_ahead(sim))
        producer = client.producer()
        scope.callback(producer.close)
        scope.enter_context(bar)
        scope.enter_context(throughput_gc())
        t0 = time.monotonic()
        task = bar.add_task(f"{cfg.patients} patients × {hours:g} h", total=hours, msgs=0)
        for chunk in chunks:
            for role, key, value, emit_s in chunk:
                if live:
                    wait = t0 + emit_s / cfg.speedup - time.monotonic()
                    if wait > 0.002:
                        time.sleep(wait)
                producer.send(topics[role], value, key=key)
            summary.messages += len(chunk)
            done = min(hours, chunk[-1][3] / 3600) if chunk else hours
            bar.update(task, completed=done, msgs=summary.messages)
        producer.flush()
    summary.seconds = time.monotonic() - t0
    log.info(
        "simulation sent",
        extra={
            "stage": "simulate",
            "messages": summary.messages,
            "messages_per_s": round(summary.rate),
            "scenario": cfg.scenario,
            "seed": cfg.seed,
        },
    )
    Lake(settings.resolve(settings.lake.root)).write_json(
        summary.to_dict(), f"_simulator/{cfg.scenario}-seed{cfg.seed}.json"
    )
    return summary, sim


def main(
    patients: int = typer.Option(None, help="Patients on the ward (default: config)."),
    hours: float = typer.Option(None, help="Simulated hours."),
    seed: int = typer.Option(None, help="Random seed."),
    scenario: str = typer.Option(None, help="baseline | respiratory_wave | ..."),
    mode: str = typer.Option(None, help="backfill | live"),
    speedup: float = typer.Option(None, help="Live mode: simulated seconds per second."),
) -> None:
    """Simulate a ward and stream it into Kafka."""
    settings = with_simulator(
        load_settings(),
        patients=patients,
        hours=hours,
        seed=seed,
        scenario=scenario,
        mode=mode,
        speedup=speedup,
    )
    configure_logging(settings.logging)
    summary, _ = simulate_to_kafka(settings, progress=True)
    s = summary.stats
    typer.echo(
        f"sent {summary.messages:,} messages in {summary.seconds:.1f}s "
        f"({summary.rate:,.0f}/s): {s.valid_events:,} events, {s.admissions} admissions, "
        f"{s.outcomes} outcomes, "
        f"{sum(s.malformed.values())} malformed, {s.duplicates} duplicates, {s.late} late"
    )


if __name__ == "__main__":
    typer.run(main)
