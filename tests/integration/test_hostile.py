"""No message, outage or request stops monitoring: the scorer and the service on real parts.

Each reported way of stopping scoring (issue 27) is reproduced here through the real
broker, scorer, BentoML service and PostgreSQL, then hunted for more with hypothesis.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pandas as pd
import psutil
import pytest
import yaml
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from mlflow import MlflowClient

from features.spec import FEATURE_NAMES
from pipelines.produce import simulate_to_kafka, with_simulator
from serving import wire
from serving.scorer import Scorer
from stack.kafka import KafkaClient
from stack.localstack import PostgresService, endpoints, ensure_topics, free_port
from stack.resilience import OutageError
from stack.settings import Settings, load_settings
from tests.integration.conftest import _query, _wait_version

pytestmark = pytest.mark.integration

YEAR_2300_MS = 10_413_792_000_000
YEAR_20000_MS = 568_024_668_000_000


def _event(pid: str, ts: str = "2026-01-05T01:00:00Z", **vitals: Any) -> dict[str, Any]:
    base = {"heart_rate": 80.0, "spo2": 96.0, "resp_rate": 16.0, "temperature": 37.0}
    return {
        "event_id": str(uuid.uuid4()), "schema_version": 1, "patient_id": pid,
        "device_id": "dev-h", "ts": ts, "consciousness": "A", "on_oxygen": False,
        **(base | vitals),
    }  # fmt: skip


def _send(s: Settings, messages: list[tuple[bytes, bytes | None, int | None]]) -> None:
    ensure_topics(s)
    producer = KafkaClient(s.kafka, endpoints(s).bootstrap_servers).producer()
    for value, key, ts in messages:
        producer.send(s.kafka.topics.vitals, value, key=key, timestamp_ms=ts)
    producer.flush()
    producer.close()


def _accounted(s: Settings) -> Counter[str]:
    """Where each consumed message ended: a champion row (scored or a status) or a dead
    letter, by event id / offset."""
    rows = _query(s, "SELECT status, count(*), count(DISTINCT event_id) FROM predictions "
                     "WHERE role = 'champion' GROUP BY status")  # fmt: skip
    assert all(n == d for _st, n, d in rows), "an event stored twice"
    out: Counter[str] = Counter({st_: n for st_, n, _d in rows})
    for reason, n in _query(s, "SELECT reason, count(*) FROM scoring_dead_letters GROUP BY 1"):
        out[f"dead:{reason}"] = n
    return out


# --------------------------------------------------------------------------- poison
def test_the_reported_poison_messages_are_isolated_and_the_rest_is_scored(
    scorer_settings: Settings,
) -> None:
    s = with_simulator(scorer_settings, patients=8, hours=1.0, seed=41)
    sent, _ = simulate_to_kafka(s)
    hostile = [
        # A new patient whose every vital is impossible: stay_minutes was ~4.6e18 and the
        # service refused the whole micro-batch (400); the scorer exited, every restart too.
        (_event("pt-new", heart_rate=999999.0, spo2=-5.0, resp_rate=0.0, temperature=1e6,
                systolic_bp=-1e6, diastolic_bp=1e6), b"pt-new", None, "scored"),
        # A NUL in the id failed PostgreSQL's COPY, then every start's history replay.
        (_event("pt\u0000x"), b"pt-x", None, "dead:bad_id"),
        # Kafka timestamps of year 2300 (OutOfBoundsDatetime) and 20000.
        (_event("pt-k1"), b"pt-k1", YEAR_2300_MS, "scored"),
        (_event("pt-k2"), b"pt-k2", YEAR_20000_MS, "scored"),
        (_event("pt-t", ts="0001-01-01T00:00:00Z"), b"pt-t", None, "dead:time_out_of_bounds"),
        (_event("pt-t", ts="2300-01-01T00:00:00Z"), b"pt-t", None, "dead:time_out_of_bounds"),
        (_event("pt-r", heart_rate=1e308), b"pt-r", None, "dead:out_of_bounds"),
    ]  # fmt: skip
    _send(s, [(orjson.dumps(e), k, t) for e, k, t, _where in hostile])
    _send(s, [(b"\x00\xff{not json", None, YEAR_20000_MS)])

    summary = Scorer(s).run(bounded=True)
    got = _accounted(s)
    expected = Counter(where for *_x, where in hostile) + Counter({"dead:bad_json": 1})
    valid = sent.stats.valid_events
    assert sum(got.values()) == valid + len(hostile) + 1 + sum(sent.stats.malformed.values())
    for where, n in expected.items():
        if where.startswith("dead:"):
            assert got[where] == n, (where, got)
    scored = {r[0] for r in _query(s, "SELECT patient_id FROM predictions WHERE role = "
                                      "'champion' AND status = 'scored'")}  # fmt: skip
    assert {"pt-new", "pt-k1", "pt-k2"} <= scored
    kafka_ts = dict(
        _query(s, "SELECT patient_id, kafka_ts FROM predictions "
                  "WHERE patient_id IN ('pt-k1', 'pt-k2') AND role = 'champion'")
    )  # fmt: skip
    assert kafka_ts == {"pt-k1": None, "pt-k2": None}  # unknown, not a time
    assert summary.scored >= 0.95 * valid

    # A scorer that starts over (a new group: the history replay covers them all) copes.
    again = s.with_scorer(group_id=s.scorer.group_id + "-again")
    second = Scorer(again).run(bounded=True)
    assert second.scored == summary.scored
    assert _accounted(s) == got  # nothing stored twice


def test_rows_the_service_refuses_are_bisected_out_and_the_rest_scored(
    scorer_settings: Settings,
) -> None:
    """A 400 for one row refused the whole micro-batch; now only that row is set aside."""
    scorer = Scorer(scorer_settings)
    try:
        x = np.random.default_rng(3).normal(0, 1, size=(2500, len(FEATURE_NAMES)))
        x[[17, 1999], 4] = 5e18  # beyond what the service accepts
        preds, refused = scorer._score(x)
    finally:
        scorer.service.close()
    assert [i for i, _why in refused] == [17, 1999]
    assert all("row 0" in why and "400" in why for _i, why in refused)
    assert len(preds) == 2498
    alone = np.delete(x, [17, 1999], axis=0)
    whole = scorer.service.__class__(scorer.service.url).predict_matrix(alone[:500])
    np.testing.assert_allclose(preds["risk"].to_numpy()[:500], whole["risk"].to_numpy())


def test_rows_postgresql_refuses_are_isolated_and_the_rest_stored(
    scorer_settings: Settings,
) -> None:
    """A hospital database's constraint (here on one patient) refused a batch: the scorer
    crashed. Its events now become dead letters; every other event is stored."""
    s = with_simulator(scorer_settings, patients=6, hours=0.5, seed=43)
    sent, _ = simulate_to_kafka(s)
    poison = [_event("pt-poison", ts=f"2026-01-05T00:{m:02d}:00Z") for m in range(5)]
    _send(s, [(orjson.dumps(e), b"pt-poison", None) for e in poison])
    Scorer(s).prepare()  # the tables, then a constraint they did not ship with
    with contextlib.closing(_connect(s)) as conn:
        conn.execute(
            "ALTER TABLE predictions ADD CONSTRAINT no_poison CHECK (patient_id <> 'pt-poison')"
        )
        conn.commit()
    summary = Scorer(s).run(bounded=True)
    got = _accounted(s)
    assert got["dead:store_rejected"] == 5
    assert summary.isolated["store_rejected"] == 5
    assert got["scored"] + got["too_late"] + got["future"] == sent.stats.valid_events
    raw = {bytes(r[0]) for r in _query(s, "SELECT value FROM scoring_dead_letters "
                                          "WHERE reason = 'store_rejected'")}  # fmt: skip
    assert raw == {orjson.dumps(e) for e in poison}  # the original bytes


def _connect(s: Settings) -> Any:
    import psycopg

    return psycopg.connect(endpoints(s).database_url)


# --------------------------------------------------------------------------- outages
@pytest.fixture
def own_postgres(tmp_path: Path, scorer_settings: Settings) -> Iterator[tuple[Settings, Any]]:
    """The scorer's settings on a PostgreSQL instance of this test's own, to kill."""
    run = tmp_path / "pg-run"
    overlay = {"run_dir": str(run), "local_stack": {"postgres_port": free_port(),
               "services": ["postgres"], "start_timeout_s": 60}}  # fmt: skip
    (tmp_path / "pg.yaml").write_text(yaml.safe_dump(overlay))
    pg_settings = load_settings(tmp_path / "pg.yaml", environ={})
    svc = PostgresService(pg_settings)
    svc.start()
    url = endpoints(pg_settings).database_url
    s = scorer_settings.model_copy(
        update={"postgres": scorer_settings.postgres.model_copy(update={"url": url})}
    )
    try:
        yield s, svc
    finally:
        svc.stop()


def _kill_postgres(svc: Any) -> None:
    pid = svc.pid()
    assert pid is not None
    family = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    for p in family:
        with contextlib.suppress(psutil.Error):
            p.send_signal(signal.SIGKILL)
    psutil.wait_procs(family, timeout=10)


def test_postgresql_killed_mid_stream_is_waited_out_and_nothing_is_lost(
    own_postgres: tuple[Settings, Any],
) -> None:
    s, svc = own_postgres
    s = with_simulator(s.with_scorer(backoff_max_s=1.0), patients=20, hours=1.0, seed=44)
    scorer = Scorer(s)
    scorer.prepare()
    first, _ = simulate_to_kafka(s)
    out: dict[str, Any] = {}
    t = threading.Thread(target=lambda: out.update(summary=scorer.run()), daemon=True)
    t.start()
    _wait_for(lambda: _count(s) == first.stats.valid_events, 120, "the first ward scored")
    _kill_postgres(svc)
    second, _ = simulate_to_kafka(with_simulator(s, seed=45))  # arrives during the outage
    _wait_for(lambda: scorer.metrics.dependency_up.labels("postgres")._value.get() == 0, 30,
              "the scorer to notice the outage")  # fmt: skip
    time.sleep(15)
    assert t.is_alive(), "the scorer stopped during the outage"
    svc.start()
    total = first.stats.valid_events + second.stats.valid_events
    _wait_for(lambda: _count(s) == total, 120, "the second ward scored after the outage")
    scorer.stop.set()
    t.join(60)
    summary = out["summary"]
    assert summary.outages["postgres"] >= 1
    assert scorer.metrics.dependency_up.labels("postgres")._value.get() == 1
    counts = _query(s, "SELECT count(*), count(DISTINCT event_id) FROM predictions "
                       "WHERE role = 'champion'")  # fmt: skip
    assert counts == [(total, total)]


def _count(s: Settings) -> int:
    try:
        return int(_query(s, "SELECT count(*) FROM predictions WHERE role = 'champion'")[0][0])
    except Exception:
        return -1


def _wait_for(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def test_bounded_scoring_without_a_service_ends_with_an_error_naming_it(
    scorer_settings: Settings,
) -> None:
    """``make score BOUNDED=1`` with no service retried for 20+ minutes and never ended."""
    dead_port = free_port()
    s = scorer_settings.model_copy(
        update={"serving": scorer_settings.serving.model_copy(
            update={"url": f"http://127.0.0.1:{dead_port}"})}
    ).with_scorer(outage_max_wait_s=3.0, backoff_max_s=1.0)  # fmt: skip
    simulate_to_kafka(with_simulator(s, patients=3, hours=0.25, seed=46))
    t0 = time.monotonic()
    with pytest.raises(OutageError, match=r"service unavailable for \d+ s"):
        Scorer(s).run(bounded=True)
    assert time.monotonic() - t0 < 60
    assert _query(s, "SELECT count(*) FROM predictions") == [(0,)]  # nothing half-stored


# --------------------------------------------------------------------------- models
def test_a_model_not_sealed_by_this_platform_is_never_served(served: dict[str, Any]) -> None:
    """Any pickled model registered in the (unauthenticated) MLflow was hot-loaded within
    one reload interval. Now the alias may move, but the service keeps its model."""
    import mlflow
    from sklearn.dummy import DummyClassifier

    base: Settings = served["settings"]
    name = base.training.registered_model
    client = MlflowClient(endpoints(base).mlflow_uri)
    mlflow.set_tracking_uri(endpoints(base).mlflow_uri)
    x = pd.DataFrame(np.zeros((4, len(FEATURE_NAMES))), columns=list(FEATURE_NAMES))
    model = DummyClassifier(strategy="constant", constant=1).fit(x, [0, 1, 0, 1])
    tags = {"feature_set_version": client.get_model_version(name, served["champion"])
            .tags["feature_set_version"], "threshold": "0.990000"}  # fmt: skip
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(model, name="m", serialization_format="cloudpickle")
    rogue = mlflow.register_model(info.model_uri, name, tags=tags).version
    challenger = served["challenger"]
    threshold = client.get_model_version(name, challenger).tags["threshold"]
    try:
        for version in (rogue, challenger):
            if version == challenger:  # a signed model whose threshold was edited after
                client.set_model_version_tag(name, version, "threshold", "0.999000")
            client.set_registered_model_alias(name, "champion", version)
            time.sleep(3 * base.serving.reload_interval_s + 1)
            model_now = httpx.post(f"{served['url']}/model", json={}).json()["champion"]
            assert model_now["version"] == served["champion"], version
        log = served["proc"].log.read_text(errors="replace")
        assert f"refusing {name} v{rogue}" in log
        assert "runs code when loaded" in log or "no signed digest" in log
        assert "signature does not verify" in log
    finally:
        client.set_model_version_tag(name, challenger, "threshold", threshold)
        client.set_registered_model_alias(name, "champion", served["champion"])
        _wait_version(served["url"], served["champion"])


# --------------------------------------------------------------------------- HTTP
@pytest.mark.parametrize("year", ["0001", "0100", "1500", "9999"])
def test_score_vitals_with_an_impossible_year_is_a_400(served: dict[str, Any], year: str) -> None:
    event = _event("pt-y", ts=f"{year}-06-01T00:00:00Z")
    r = httpx.post(f"{served['url']}/score_vitals",
                   json={"patients": [{"patient_id": "pt-y", "events": [event]}]})  # fmt: skip
    assert r.status_code == 400, r.text
    assert "ts" in r.text


def test_an_arrow_integer_beyond_float_precision_is_a_400(served: dict[str, Any]) -> None:
    import pyarrow as pa

    cols = [pa.array([0.5]) for _ in FEATURE_NAMES]
    cols[3] = pa.array([2**62], type=pa.int64())
    batch = pa.RecordBatch.from_arrays(cols, names=list(FEATURE_NAMES))
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as w:
        w.write_batch(batch)
    r = httpx.post(f"{served['url']}/arrow/predict", content=bytes(sink.getvalue()),
                   headers={"content-type": wire.MEDIA_TYPE})  # fmt: skip
    assert r.status_code == 400
    assert FEATURE_NAMES[3] in r.json()["error"]


def test_a_chunked_body_over_the_limit_is_a_413(served: dict[str, Any]) -> None:
    """The 8 MB limit only checked Content-Length: a 12.9 MB chunked body got a 200."""
    row = orjson.dumps(dict.fromkeys(FEATURE_NAMES, 0.5))
    limit = served["settings"].serving.max_request_bytes

    def chunks() -> Iterator[bytes]:
        yield b'{"rows": ['
        n = 0
        while n < limit * 1.6:
            yield row + b","
            n += len(row) + 1
        yield row + b"]}"

    r = httpx.post(f"{served['url']}/predict", content=chunks(),
                   headers={"content-type": "application/json"}, timeout=60)  # fmt: skip
    assert r.status_code == 413
    assert "over" in r.json()["error"]


@pytest.mark.parametrize("kind", ["text/plain", "application/x-www-form-urlencoded", None])
def test_a_body_of_another_type_is_a_415(served: dict[str, Any], kind: str | None) -> None:
    body = orjson.dumps({"rows": [dict.fromkeys(FEATURE_NAMES, 0.5)]})
    headers = {"content-type": kind} if kind else {}
    r = httpx.post(f"{served['url']}/predict", content=body, headers=headers)
    assert r.status_code == 415
    assert "application/json" in r.json()["error"]


def test_rejected_bodies_never_reach_the_log(served: dict[str, Any]) -> None:
    """BentoML logged each 400's pydantic error with ``input_value=``: the request body."""
    marker = f"pt-{uuid.uuid4().hex[:10]}"
    bad = [
        {"rows": [{**dict.fromkeys(FEATURE_NAMES, 0.5), FEATURE_NAMES[0]: marker}]},
        {"patients": [{"patient_id": marker, "events": [_event(marker, heart_rate=marker)]}]},
    ]
    for path, body in zip(("/predict", "/score_vitals"), bad, strict=True):
        r = httpx.post(f"{served['url']}{path}", json=body)
        assert r.status_code == 400
    time.sleep(1.0)
    log = served["proc"].log.read_text(errors="replace")
    assert "Exception on /predict" in log or "ValidationError" in log  # it did log them
    assert marker not in log


_EXTREME = st.one_of(
    st.none(), st.floats(allow_nan=True, allow_infinity=True), st.integers(-(2**70), 2**70),
    st.sampled_from([1e308, -1e308, 5e-324, 1e6, -1e6]), st.text(max_size=5),
)  # fmt: skip
_TS = st.one_of(
    st.datetimes(
        min_value=pd.Timestamp("1900-01-01").to_pydatetime(),
        max_value=pd.Timestamp("2250-01-01").to_pydatetime(),
    ).map(lambda d: d.isoformat() + "Z"),
    st.sampled_from(["0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "2026-01-05T00:00:00+14:00"]),
)


@st.composite
def _patients(draw: st.DrawFn) -> Any:
    n = draw(st.integers(1, 3))
    out = []
    for i in range(n):
        pid = draw(st.sampled_from([f"pt-{i}", "pt\u0000", "x" * 200, ""]))
        events = [
            {**_event(pid, ts=draw(_TS)), **{v: draw(_EXTREME) for v in
             draw(st.sets(st.sampled_from(["heart_rate", "spo2", "resp_rate", "temperature",
                                           "systolic_bp", "diastolic_bp"])))}}
            for _ in range(draw(st.integers(1, 6)))
        ]  # fmt: skip
        out.append({"patient_id": pid, "events": events})
    return {"patients": out}


@hsettings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=_patients())
def test_no_raw_events_get_a_5xx(served: dict[str, Any], body: Any) -> None:
    r = httpx.post(
        f"{served['url']}/score_vitals",
        content=json.dumps(body),  # big integers, NaN and Infinity tokens as they come
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert r.status_code < 500, (body, r.text[:300])
    if r.status_code >= 400:
        assert r.json()
    else:
        for p in r.json():
            assert 0.0 <= p["risk"] <= 1.0


# --------------------------------------------------------------------------- the hunt
_ID = st.one_of(
    st.sampled_from(["pt-1", "pt-2", "pt-3"]),
    st.text(max_size=70),
)
_READING = st.one_of(
    st.none(),
    st.floats(-2e6, 2e6),
    st.sampled_from([1e308, -1e308, 0.0, 1e6, -1e6, 5e-324]),
)
_EVENT_TS = st.one_of(
    st.datetimes(
        min_value=pd.Timestamp("1960-01-01").to_pydatetime(),
        max_value=pd.Timestamp("2250-01-01").to_pydatetime(),
    ).map(lambda d: d.isoformat() + "Z"),
    st.datetimes(
        min_value=pd.Timestamp("2026-01-05").to_pydatetime(),
        max_value=pd.Timestamp("2026-01-05T06:00").to_pydatetime(),
    ).map(lambda d: d.isoformat() + "Z"),
)


@st.composite
def _message(draw: st.DrawFn) -> tuple[bytes, bytes | None, int | None]:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=200)), None, None
    event = _event(draw(_ID), ts=draw(_EVENT_TS))
    for vital in draw(st.sets(st.sampled_from(["heart_rate", "spo2", "resp_rate",
                                               "temperature", "systolic_bp"]))):  # fmt: skip
        event[vital] = draw(_READING)
    if draw(st.integers(0, 9)) == 0:
        event[draw(st.sampled_from(["consciousness", "on_oxygen", "schema_version", "x"]))] = draw(
            st.one_of(st.text(max_size=3), st.integers(), st.none())
        )
    ts = draw(st.one_of(st.none(), st.integers(0, 2**62)))
    key = draw(st.one_of(st.none(), st.binary(max_size=20)))
    return json.dumps(event).encode(), key, ts


@hsettings(
    max_examples=5,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(messages=st.lists(_message(), min_size=1, max_size=80))
def test_no_message_stops_the_scorer_and_each_ends_in_exactly_one_place(
    scorer_settings: Settings, messages: list[tuple[bytes, bytes | None, int | None]]
) -> None:
    """Arbitrary bytes and contract-valid extremes through the real broker, scorer,
    service and PostgreSQL: the scorer never exits, every message is a prediction row or
    a dead letter (once), and every event the contract accepts gets its row."""
    from stack.batchvalidate import BatchValidator
    from stack.contracts import VitalsEvent
    from stack.settings import TopicNames

    tag = uuid.uuid4().hex[:8]
    s = scorer_settings.model_copy(
        update={"kafka": scorer_settings.kafka.model_copy(update={"topics": TopicNames(
            **{k: f"{v}.{tag}" for k, v in scorer_settings.kafka.topics.model_dump().items()})})}
    ).with_scorer(group_id=f"hunt-{tag}")  # fmt: skip
    _send(s, messages)
    summary = Scorer(s).run(bounded=True)
    assert summary.records == len(messages)
    accepted = BatchValidator(VitalsEvent, s.contract.bounds()).validate([m for m, *_ in messages])
    ids = accepted.table.column("event_id").to_pylist()
    rows = _query(s, "SELECT event_id FROM predictions WHERE role = 'champion' AND event_id IN "
                     "(" + ",".join(f"'{i}'" for i in ids or ["none"]) + ")")  # fmt: skip
    dead = _query(s, f"SELECT count(*) FROM scoring_dead_letters "
                     f"WHERE kafka_topic = '{s.kafka.topics.vitals}'")[0][0]  # fmt: skip
    assert sorted(r[0] for r in rows) == sorted(ids)
    assert len(rows) + dead == len(messages)
