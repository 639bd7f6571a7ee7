"""Simulator → Kafka → raw lake: every message accounted for, exactly once, across crashes."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import psutil
import pyarrow.compute as pc
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from pipelines.landing import Lander
from pipelines.produce import simulate_to_kafka, with_simulator
from pipelines.simulator.engine import MALFORMED_KINDS
from stack.catalog import (
    RAW_ADMISSIONS,
    RAW_DEAD,
    RAW_OUTCOMES,
    RAW_VITALS,
    landing_journals,
)
from stack.contracts import VitalsEvent
from stack.kafka import KafkaClient
from stack.lake import Lake
from stack.localstack import endpoints, ensure_topics
from stack.settings import Settings, TopicNames
from tests.integration.importaudit import (
    as_deployed,
    as_stream_image,
    audits,
    imported_outside_the_image,
)

pytestmark = pytest.mark.integration

FAULTY = {
    "missing": 0.03, "artifact": 0.01, "impossible": 0.005, "fahrenheit_device": 0.1,
    "duplicate": 0.02, "late": 0.03, "malformed": 0.02,
}  # fmt: skip


def _lake(s: Settings) -> Lake:
    return Lake(s.resolve(s.lake.root))


def _offsets(lake: Lake) -> Counter[tuple[str, int, int]]:
    """How many times each (topic, partition, offset) appears across the raw zones."""
    seen: Counter[tuple[str, int, int]] = Counter()
    for zone in (RAW_VITALS, RAW_OUTCOMES, RAW_ADMISSIONS, RAW_DEAD):
        t = lake.read_table(zone)
        if t.num_rows:
            seen.update(
                zip(
                    t["kafka_topic"].to_pylist(),
                    t["kafka_partition"].to_pylist(),
                    t["kafka_offset"].to_pylist(),
                    strict=True,
                )
            )
    return seen


def _assert_exactly_once(s: Settings, lake: Lake) -> None:
    seen = _offsets(lake)
    assert max(seen.values()) == 1, "an offset landed twice"
    client = KafkaClient(s.kafka, endpoints(s).bootstrap_servers)
    for topic in (s.kafka.topics.vitals, s.kafka.topics.outcomes, s.kafka.topics.admissions):
        for tp in client.all_partitions([topic]):
            offs = sorted(o for (t, p, o) in seen if t == topic and p == tp.partition)
            assert offs == list(range(len(offs))), f"gap in {topic}/{tp.partition}"


@pytest.mark.parametrize("fetch", ["process", "inline"])
def test_round_trip_reconciles_with_the_simulator(stack_settings: Settings, fetch: str) -> None:
    s = with_simulator(stack_settings, faults=FAULTY)
    s = s.model_copy(update={"landing": s.landing.model_copy(update={"fetch": fetch})})
    sent, sim = simulate_to_kafka(s, record_faults=True)
    landed = Lander(s).run(bounded=True)
    lake = _lake(s)

    st = sent.stats
    malformed = sum(st.malformed.values())
    assert landed.records == sent.messages
    vitals = lake.read_table(RAW_VITALS)
    assert vitals.num_rows == st.vitals_messages - malformed == landed.vitals
    assert len(set(vitals["event_id"].to_pylist())) == st.valid_events
    assert vitals.num_rows - st.valid_events == st.duplicates
    outcomes = lake.read_table(RAW_OUTCOMES)
    assert outcomes.num_rows == st.outcomes
    admissions = lake.read_table(RAW_ADMISSIONS)
    assert admissions.num_rows == st.admissions == landed.admissions
    assert set(admissions["patient_id"].to_pylist()) <= set(vitals["patient_id"].to_pylist())
    dead = lake.read_table(RAW_DEAD)
    assert Counter(dead["reason"].to_pylist()) == Counter(
        {k: v for k, v in st.malformed.items() if v}
    )
    _assert_exactly_once(s, lake)

    # Partitioned by event hour: every row sits in the folder of its own timestamp.
    for rel in lake.files(RAW_VITALS):
        t = lake.read_table(rel)
        hours = set(pc.strftime(t["ts"], "date=%Y-%m-%d/hour=%H").to_pylist())
        assert hours == {"/".join(rel.split("/")[2:4])}
    # The physiology survives the trip: °F devices still read °F in the raw zone.
    fahr = [e for e, kinds in sim.fault_log.items() if kinds == ["fahrenheit"]]
    temps = vitals.filter(pc.is_in(vitals["event_id"], value_set=pc.cast(fahr, "string")))
    assert pc.min(temps["temperature"]).as_py() > 90


def test_dead_letters_keep_the_bytes_and_the_reason(stack_settings: Settings) -> None:
    s = stack_settings
    ensure_topics(s)
    client = KafkaClient(s.kafka, endpoints(s).bootstrap_servers)
    good = {
        "event_id": str(uuid.uuid4()), "schema_version": 1, "patient_id": "pt-x",
        "device_id": "dev-x", "ts": "2026-01-05T00:00:00Z", "heart_rate": 80,
    }  # fmt: skip
    cases = {
        "bad_json": b'{"event_id": "abc', "wrong_type": orjson.dumps({**good, "spo2": "97"}),
        "missing_field": orjson.dumps({k: v for k, v in good.items() if k != "patient_id"}),
        "invalid_value": orjson.dumps({**good, "consciousness": "Z"}),
        "unknown_field": orjson.dumps({**good, "pulse": 80}),
    }  # fmt: skip
    producer = client.producer()
    for value in cases.values():
        producer.send(s.kafka.topics.vitals, value, key=b"pt-x")
    producer.send(s.kafka.topics.vitals, orjson.dumps(good), key=b"pt-x")
    producer.send(s.kafka.topics.outcomes, b'{"kind": "sepsis"}', key=b"pt-x")
    producer.flush()
    producer.close()

    summary = Lander(s).run(bounded=True)
    assert summary.vitals == 1
    dead = _lake(s).read_table(RAW_DEAD).to_pylist()
    by_value = {r["value"]: r for r in dead}
    for reason, value in cases.items():
        assert by_value[value]["reason"] == reason
        assert by_value[value]["detail"]
    outcome_dead = [r for r in dead if r["kafka_topic"] == s.kafka.topics.outcomes]
    assert [r["reason"] for r in outcome_dead] == ["missing_field"]

    # ... and the dead-letter topic carries the same messages with their reason.
    consumer = client.consumer()
    consumer.assign(client.all_partitions([s.kafka.topics.dead_letters]))
    got = []
    for _ in range(30):
        got += consumer.poll_batch(100, 0.3)
        if len(got) >= len(cases) + 1:
            break
    consumer.close()
    reasons = Counter(dict(r.headers)["reason"].decode() for r in got)
    assert reasons == Counter([*cases, "missing_field"])
    assert {r.value for r in got} >= set(cases.values())


def _lander_cmd(s: Settings, tmp: Path) -> tuple[list[str], dict[str, str]]:
    overlay = tmp / "lander.yaml"
    overlay.write_text(yaml.safe_dump(orjson.loads(s.model_dump_json())))
    env = {**os.environ, "VIGIL_CONFIG": str(overlay)}
    return [sys.executable, "-m", "pipelines.landing"], env


def _crash_a_lander(s: Settings, tmp: Path) -> tuple[list[str], dict[str, str]]:
    """A lander process that dies between its second flush's files and their commit;
    returns the command and environment of a lander on the same settings."""
    cmd, env = _lander_cmd(s, tmp)
    crashed = subprocess.run(
        cmd, env={**env, "VIGIL_FAILPOINT": "landing.after_write:2"},
        capture_output=True, timeout=300, check=False,
    )  # fmt: skip
    assert crashed.returncode == 17, crashed.stderr.decode()[-2000:]
    return cmd, env


def test_crash_between_write_and_commit_loses_and_duplicates_nothing(
    stack_settings: Settings, tmp_path: Path
) -> None:
    s = with_simulator(stack_settings, faults=FAULTY)
    s = s.model_copy(update={"landing": s.landing.model_copy(update={"flush_records": 3000})})
    sent, _ = simulate_to_kafka(s)
    cmd, env = _crash_a_lander(s, tmp_path)
    lake = _lake(s)
    assert len(lake.files(landing_journals(s.landing.group_id), ".json")) == 1
    assert max(_offsets(lake).values()) == 1
    done = subprocess.run(cmd, env=env, capture_output=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert b"recovered an interrupted flush" in done.stderr
    _assert_exactly_once(s, lake)
    assert sum(_offsets(lake).values()) == sent.messages


def test_the_lander_runs_with_only_what_the_stream_image_installs(
    stack_settings: Settings, tmp_path: Path
) -> None:
    """Deployed (addresses given) and able to import only ``deploy/requirements-stream.txt``
    (every other installed module refused), the lander lands every message."""
    s = as_deployed(with_simulator(stack_settings, faults=FAULTY, patients=10, hours=1, seed=5))
    sent, _ = simulate_to_kafka(s)
    cmd, env = _lander_cmd(s, tmp_path)
    audit = tmp_path / "imports"
    audit.mkdir()
    done = subprocess.run(cmd, env=as_stream_image(env, audit), capture_output=True,
                          timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    _assert_exactly_once(s, _lake(s))
    assert sum(_offsets(_lake(s)).values()) == sent.messages
    (lander,) = audits(audit)  # (its fetch process is ended by it: no exit hook runs)
    assert {"pyarrow", "kafka", "pydantic"} <= set(lander["imported"])
    assert not imported_outside_the_image(audit)


def test_kill_mid_drain_then_rerun_loses_nothing(stack_settings: Settings, tmp_path: Path) -> None:
    # Many small flushes, so that the kill surely lands while work remains.
    s = with_simulator(stack_settings, faults=FAULTY, patients=60, hours=6)
    s = s.model_copy(update={"landing": s.landing.model_copy(update={"flush_records": 1000})})
    sent, _ = simulate_to_kafka(s)
    cmd, env = _lander_cmd(s, tmp_path)
    lake = _lake(s)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not lake.files(RAW_VITALS):
        time.sleep(0.005)
    fetchers = psutil.Process(proc.pid).children()
    assert fetchers, "the lander reads Kafka in a child process by default"
    proc.kill()  # SIGKILL: no chance to flush or clean up
    proc.wait()
    # Its fetch process notices the broken pipe and exits on its own.
    _gone, alive = psutil.wait_procs(fetchers, timeout=10)
    assert not alive, "the fetch process outlived the lander"
    partial = sum(_offsets(lake).values())
    assert 0 < partial < sent.messages, "the kill should land mid-drain"
    subprocess.run(cmd, env=env, capture_output=True, timeout=300, check=True)
    _assert_exactly_once(s, lake)
    assert sum(_offsets(lake).values()) == sent.messages


def test_continuous_mode_lands_while_producing_and_stops_cleanly(
    stack_settings: Settings,
) -> None:
    s = stack_settings.model_copy(
        update={"landing": stack_settings.landing.model_copy(update={"flush_seconds": 0.5})}
    )
    ensure_topics(s)
    lander = Lander(s)
    result = {}
    t = threading.Thread(target=lambda: result.update(s=lander.run(bounded=False, max_seconds=8)))
    t.start()
    sent, _ = simulate_to_kafka(with_simulator(s, patients=10, hours=1))
    t.join(timeout=60)
    summary = result["s"]
    assert summary.mode == "continuous"
    assert summary.records == sent.messages
    assert summary.flushes >= 1
    _assert_exactly_once(s, _lake(s))


def test_malformed_kinds_all_reach_the_dead_letters(stack_settings: Settings) -> None:
    s = with_simulator(stack_settings, faults={**FAULTY, "malformed": 0.05}, patients=20, hours=2)
    sent, _ = simulate_to_kafka(s)
    Lander(s).run(bounded=True)
    reasons = Counter(_lake(s).read_table(RAW_DEAD)["reason"].to_pylist())
    assert set(reasons) == set(MALFORMED_KINDS)
    assert reasons == Counter(sent.stats.malformed)


def test_live_mode_is_paced_to_the_clock(stack_settings: Settings) -> None:
    # Half an hour of ward time at 3600x: about half a second of wall-clock time.
    s = with_simulator(stack_settings, patients=5, hours=0.5, mode="live", speedup=3600)
    t0 = time.monotonic()
    sent, _ = simulate_to_kafka(s)
    elapsed = time.monotonic() - t0
    assert 0.4 < elapsed < 5
    backfill, _ = simulate_to_kafka(with_simulator(stack_settings, patients=5, hours=0.5))
    assert backfill.messages == sent.messages
    assert Lander(s).run(bounded=True).records == 2 * sent.messages


# --------------------------------------------------------------------------- hostile input
def _event(**over: object) -> bytes:
    good = {
        "event_id": str(uuid.uuid4()), "schema_version": 1, "patient_id": "pt-h",
        "device_id": "dev-h", "ts": "2026-01-05T00:00:00Z", "heart_rate": 80,
    }  # fmt: skip
    return orjson.dumps({**good, **over})


GOOD_KEYS = set(orjson.loads(_event()))
YEAR_20000_MS = 568_024_668_000_000  # 20000-01-01: a Kafka timestamp any producer may set


def test_a_hostile_kafka_timestamp_is_a_null_not_a_crash(stack_settings: Settings) -> None:
    """Year 20000 on an undecodable message crashed the lander ("year 20000 is out of
    range": dead letters were partitioned by the producer's timestamp), and valid
    messages on other partitions landed 0 rows."""
    s = stack_settings
    ensure_topics(s)
    producer = KafkaClient(s.kafka, endpoints(s).bootstrap_servers).producer()
    vitals = s.kafka.topics.vitals
    producer.send(vitals, b"\xff\x00 not json", key=b"pt-h", timestamp_ms=YEAR_20000_MS)
    producer.send(vitals, _event(), key=b"pt-h", timestamp_ms=YEAR_20000_MS)
    for i in range(30):
        producer.send(vitals, _event(patient_id=f"pt-{i}"), key=f"pt-{i}".encode())
    producer.send(vitals, _event(patient_id="pt\u0000x"), key=b"pt-h")
    producer.send(vitals, _event(ts="2300-01-01T00:00:00Z"), key=b"pt-h")
    producer.send(vitals, _event(ts="1999-06-01T00:00:00Z"), key=b"pt-h")
    producer.flush()
    producer.close()

    summary = Lander(s).run(bounded=True)
    lake = _lake(s)
    assert summary.records == 35
    assert summary.vitals == 31
    landed = lake.read_table(RAW_VITALS)
    assert sorted(x is None for x in landed["kafka_ts"].to_pylist()) == [False] * 30 + [True]
    dead = lake.read_table(RAW_DEAD).to_pylist()
    assert Counter(r["reason"] for r in dead) == {
        "bad_json": 1, "bad_id": 1, "time_out_of_bounds": 2,
    }  # fmt: skip
    assert [r["kafka_ts"] for r in dead if r["reason"] == "bad_json"] == [None]
    # Dead letters sit under the hour they landed, whatever they claim.
    folders = {"/".join(f.split("/")[2:4]) for f in lake.files(RAW_DEAD)}
    assert len(folders) == 1
    assert next(iter(folders)).startswith(f"date={time.strftime('%Y-', time.gmtime())}")
    _assert_exactly_once(s, lake)


@st.composite
def _hostile_message(draw: st.DrawFn) -> tuple[bytes | None, bytes | None, int | None]:
    """A message a producer could send: arbitrary bytes, or an event with extreme fields."""
    kind = draw(st.sampled_from(["bytes", "event", "good"]))
    if kind == "bytes":
        value = draw(st.one_of(st.none(), st.binary(max_size=300)))
    elif kind == "good":
        value = _event(patient_id=f"pt-{draw(st.integers(0, 9))}")
    else:
        over = draw(
            st.dictionaries(
                st.sampled_from(["patient_id", "device_id", "ts", "heart_rate", "spo2",
                                 "consciousness", "on_oxygen", "event_id", "extra"]),
                st.one_of(
                    st.text(max_size=70), st.floats(allow_nan=True),
                    st.integers(-(2**63), 2**64 - 1),
                    st.booleans(), st.none(),
                    st.sampled_from(["0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z",
                                     "2026-01-05T00:00:00+23:59", "20000-01-01T00:00:00Z"]),
                ),
                max_size=3,
            )
        )  # fmt: skip
        value = orjson.dumps({**orjson.loads(_event()), **over}, option=orjson.OPT_NON_STR_KEYS)
    key = draw(st.one_of(st.none(), st.binary(max_size=40)))
    ts = draw(st.one_of(st.none(), st.integers(0, 2**62), st.just(YEAR_20000_MS)))
    return value, key, ts


@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
@given(messages=st.lists(_hostile_message(), min_size=1, max_size=60))
def test_no_message_stops_the_lander_and_each_lands_in_exactly_one_place(
    stack_settings: Settings, messages: list[tuple[bytes | None, bytes | None, int | None]]
) -> None:
    s = stack_settings.model_copy(
        update={
            "kafka": stack_settings.kafka.model_copy(
                update={"topics": TopicNames(**_fresh_topics())}
            )
        }
    )
    tag = uuid.uuid4().hex[:6]  # the fixture's folder is shared by every example
    s = s.model_copy(
        update={
            "landing": s.landing.model_copy(update={"group_id": f"h-{tag}"}),
            "lake": s.lake.model_copy(update={"root": f"{s.lake.root}-{tag}"}),
        }
    )
    ensure_topics(s)
    producer = KafkaClient(s.kafka, endpoints(s).bootstrap_servers).producer()
    for value, key, ts in messages:
        producer.send(s.kafka.topics.vitals, value or b"", key=key, timestamp_ms=ts)
    producer.flush()
    producer.close()

    summary = Lander(s).run(bounded=True)
    lake = _lake(s)
    assert summary.records == len(messages)
    seen = _offsets(lake)
    assert sum(seen.values()) == len(messages)
    assert max(seen.values()) == 1
    assert summary.vitals + sum(summary.dead_letters.values()) == len(messages)
    # Every message the contract accepts landed as a row; no other did.
    landed = lake.read_table(RAW_VITALS)
    ids = Counter(landed["event_id"].to_pylist()) if landed.num_rows else Counter()
    bounds = s.contract.bounds()
    valid: Counter[str] = Counter()
    for value, _key, _ts in messages:
        try:
            event = VitalsEvent.model_validate_json(value or b"")
        except ValidationError:
            continue
        ts_us = np.array([int(event.ts.timestamp() * 1_000_000)])
        early, late = bounds.violations(ts_us, datetime.now(UTC))
        if not (early[0] or late[0]):
            valid[str(event.event_id)] += 1
    assert ids == valid


def _fresh_topics() -> dict[str, str]:
    tag = uuid.uuid4().hex[:8]
    return {
        "vitals": f"vitals.raw.{tag}", "outcomes": f"outcomes.{tag}",
        "admissions": f"admissions.{tag}", "dead_letters": f"vitals.deadletter.{tag}",
        "predictions": f"predictions.{tag}", "alerts": f"alerts.{tag}",
    }  # fmt: skip


# --------------------------------------------------------------------------- scale out
def _group_landing(s: Settings) -> Settings:
    """Landers that share the partitions in a consumer group, flushing often."""
    return s.model_copy(
        update={"landing": s.landing.model_copy(
            update={"assignment": "group", "flush_records": 1000, "flush_seconds": 0.5})}
    )  # fmt: skip


def _all_committed(s: Settings) -> bool:
    """Whether the landing group has committed every partition up to its end."""
    client, t = KafkaClient(s.kafka, endpoints(s).bootstrap_servers), s.kafka.topics
    parts = client.all_partitions([t.vitals, t.outcomes, t.admissions])
    consumer = client.consumer(s.landing.group_id)
    try:
        committed, marks = consumer.committed(parts), consumer.watermarks(parts)
    finally:
        consumer.close()
    return all((committed[tp] or 0) >= marks[tp][1] for tp in parts)


def _run_in_thread(lander: Lander, out: dict[str, Any]) -> threading.Thread:
    t = threading.Thread(target=lambda: out.update(s=lander.run(bounded=False)), daemon=True)
    t.start()
    return t


def _until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_two_landers_split_the_partitions_and_land_each_offset_once(
    stack_settings: Settings,
) -> None:
    s = _group_landing(with_simulator(stack_settings, faults=FAULTY, patients=30, hours=3))
    lake = _lake(s)
    first, _ = simulate_to_kafka(s)
    a, b = Lander(s), Lander(s)
    runs: list[dict[str, Any]] = [{}, {}]
    threads = [_run_in_thread(a, runs[0])]
    _until(lambda: sum(_offsets(lake).values()) == first.messages, 120, "the first lander")
    topics = s.kafka.topics
    every = set(KafkaClient(s.kafka, endpoints(s).bootstrap_servers).all_partitions(
        [topics.vitals, topics.outcomes, topics.admissions]))  # fmt: skip
    _until(lambda: a.holding() == every, 30, "the lone lander to hold every partition")
    threads.append(_run_in_thread(b, runs[1]))

    def split() -> bool:  # each sees the rebalance at its own next poll: wait for both
        held_a, held_b = a.holding(), b.holding()
        return bool(held_a and held_b) and not held_a & held_b and held_a | held_b == every

    _until(split, 60, "the group to split the partitions between the two")
    second, _ = simulate_to_kafka(s)  # while both run: each lands its own partitions
    total = first.messages + second.messages
    _until(lambda: sum(_offsets(lake).values()) >= total, 120, "both landers to land it all")
    for lander in (a, b):
        lander._stop_event.set()
    for t in threads:
        t.join(timeout=60)
    summaries = [r["s"] for r in runs]
    assert summaries[1].records > 0, "the second lander landed nothing"
    assert summaries[0].records > first.messages, "the first lander landed no second batch"
    _assert_exactly_once(s, lake)
    assert sum(_offsets(lake).values()) == total
    assert sum(x.records for x in summaries) == total


def test_a_lander_that_dies_mid_flush_is_settled_by_the_group(
    stack_settings: Settings, tmp_path: Path
) -> None:
    s = _group_landing(with_simulator(stack_settings, faults=FAULTY))
    sent, _ = simulate_to_kafka(s)
    _crash_a_lander(s, tmp_path)
    lake = _lake(s)
    (journal,) = lake.files(landing_journals(s.landing.group_id), ".json")
    orphaned = len(lake.read_json(journal)["files"])
    landers = [Lander(s), Lander(s)]
    runs: list[dict[str, Any]] = [{}, {}]
    threads = [_run_in_thread(x, r) for x, r in zip(landers, runs, strict=True)]
    _until(lambda: _all_committed(s) and not lake.files(landing_journals(s.landing.group_id),
           ".json"), 120, "the group to settle the journal and commit every offset")  # fmt: skip
    for lander in landers:
        lander._stop_event.set()
    for t in threads:
        t.join(timeout=60)
    _assert_exactly_once(s, lake)
    assert sum(_offsets(lake).values()) == sent.messages
    assert sum(r["s"].recovered_files for r in runs) == orphaned > 0
    assert sum(r["s"].records for r in runs) > 0  # the orphaned flush's records, again
    assert not lake.files(landing_journals(s.landing.group_id), ".json")


def test_a_lander_that_stalls_past_the_poll_interval_is_replaced_and_commits_nothing(
    stack_settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A lander frozen between its files and their commit for longer than the group
    allows (``max_poll_interval_ms``) is replaced: the other lander takes its partitions
    and settles the flush; woken, it takes the flush back instead of committing, rejoins,
    and every offset lands once. (The frozen one is not the group's leader: the embedded
    broker never elects another when a leader leaves — docs/operations.md.)"""
    s = _group_landing(with_simulator(stack_settings, faults=FAULTY, patients=30, hours=3))
    consumer = s.kafka.consumer.model_copy(
        update={"max_poll_interval_ms": 7000, "max_poll_records": 150})  # fmt: skip
    s = s.model_copy(update={
        "kafka": s.kafka.model_copy(update={"consumer": consumer}),
        "landing": s.landing.model_copy(update={"flush_records": 200}),
    })  # fmt: skip
    lake = _lake(s)
    first, _ = simulate_to_kafka(s)
    topics = s.kafka.topics
    every = set(KafkaClient(s.kafka, endpoints(s).bootstrap_servers).all_partitions(
        [topics.vitals, topics.outcomes, topics.admissions]))  # fmt: skip
    b = Lander(s)  # the group's leader
    monkeypatch.setenv("VIGIL_FAILPOINT", "landing.stall_after_write:2:20")
    a = Lander(s)  # stands still 20 s after its second flush's files
    monkeypatch.delenv("VIGIL_FAILPOINT")
    runs: list[dict[str, Any]] = [{}, {}]
    threads = [_run_in_thread(b, runs[1])]
    _until(lambda: sum(_offsets(lake).values()) == first.messages, 120,
           "the first lander to land the first batch")  # fmt: skip
    _until(lambda: b.holding() == every, 30, "the lone lander to hold every partition")
    threads.append(_run_in_thread(a, runs[0]))

    def split() -> bool:
        held_a, held_b = a.holding(), b.holding()
        return bool(held_a and held_b) and not held_a & held_b and held_a | held_b == every

    _until(split, 60, "the group to split the partitions")
    second, _ = simulate_to_kafka(s)
    assert second.messages > 1000  # several flushes each
    _until(lambda: a._landing is not None and a._landing.summary.flushes >= 2, 60,
           "the second lander to write its second flush")  # fmt: skip
    stalled = lake.read_json(a.journal)["files"]
    assert stalled
    _until(lambda: b.holding() == every, 60, "the group to replace the frozen lander")
    _until(lambda: not any(lake.exists(f) for f in stalled), 30,
           "the first lander to settle the frozen lander's flush")  # fmt: skip
    assert a._landing is not None
    assert a._landing.summary.flushes == 2  # still frozen
    _until(split, 90, "the woken lander to rejoin and the group to split again")
    assert "flush taken back: no word from the group" in caplog.text
    total = first.messages + second.messages
    _until(lambda: sum(_offsets(lake).values()) >= total and _all_committed(s), 120,
           "both landers to land it all")  # fmt: skip
    for lander in (a, b):
        lander._stop_event.set()
    for t in threads:
        t.join(timeout=60)
    summaries = [r["s"] for r in runs]
    assert summaries[1].recovered_files == len(stalled)
    assert not lake.files(landing_journals(s.landing.group_id), ".json")
    _assert_exactly_once(s, lake)
    assert sum(_offsets(lake).values()) == total
    assert sum(x.records for x in summaries) == total
