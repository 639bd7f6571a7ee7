"""The BentoML service and the Kafka scorer on real parts: broker, PostgreSQL, MLflow, BentoML.

One service process per module serves a model trained here (two versions: a champion and
a challenger); each test has its own topics, consumer group and database.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import mlflow
import numpy as np
import pandas as pd
import psutil
import psycopg
import pytest
import yaml
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from mlflow import MlflowClient
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from features.spec import FEATURE_NAMES
from pipelines.produce import simulate_to_kafka, with_simulator
from serving import wire
from serving.client import ServiceClient
from serving.model import ModelSlot, ModelUnavailableError
from serving.scorer import Scorer
from serving.server import ServingProcess
from serving.takeover import Admissions
from stack.db import migrate
from stack.kafka import KafkaClient
from stack.localstack import endpoints, free_port
from stack.localstack import mlflow_tracking_uri as tracking_uri
from stack.modelsafety import signing_key
from stack.registry import CHALLENGER, CHAMPION, ModelRegistry
from stack.settings import REPO_ROOT, Settings
from tests.integration.conftest import (
    _faulty,
    _own_database,
    _query,
    _topic_messages,
    _wait_version,
)
from tests.integration.importaudit import (
    as_deployed,
    as_stream_image,
    audits,
    imported_outside_the_image,
)

pytestmark = pytest.mark.integration


# --------------------------------------------------------------------------- tests
def test_every_valid_event_is_stored_once_invalid_ones_are_dead_letters(
    scorer_settings: Settings, served: dict[str, Any]
) -> None:
    s = _faulty(scorer_settings, seed=21)
    sent, _ = simulate_to_kafka(s)
    malformed = sum(sent.stats.malformed.values())
    assert malformed > 0
    assert sent.stats.duplicates > 0
    summary = Scorer(s).run(bounded=True)

    champion = _query(s, "SELECT status, count(*), count(DISTINCT event_id) FROM predictions "
                         "WHERE role = 'champion' GROUP BY status")  # fmt: skip
    by_status = {st_: (n, d) for st_, n, d in champion}
    total = sum(n for n, _ in by_status.values())
    assert total == sent.stats.valid_events  # exactly one per distinct valid event
    assert all(n == d for n, d in by_status.values())
    assert by_status["scored"][0] == summary.scored > 0.95 * total
    dead = _query(s, "SELECT reason, count(*) FROM scoring_dead_letters GROUP BY reason")
    assert sum(n for _, n in dead) == malformed
    assert all(reason for reason, _ in dead)
    versions = _query(s, "SELECT DISTINCT model_version FROM predictions "
                         "WHERE role = 'champion' AND status = 'scored'")  # fmt: skip
    assert versions == [(served["champion"],)]
    # Shadow: the challenger scored the same events, and never alerted.
    shadow = _query(s, "SELECT count(*), min(model_version) FROM predictions WHERE role='shadow'")
    assert shadow == [(summary.scored, served["challenger"])]
    # Alerts respect the policy: a repeat within the quiet period only after a rise.
    alerts = pd.DataFrame(
        _query(s, "SELECT patient_id, ts, risk, reason, top_features FROM alerts ORDER BY ts"),
        columns=["patient_id", "ts", "risk", "reason", "top_features"],
    )
    assert len(alerts) == summary.alerts > 0
    cfg = s.scorer
    for _, g in alerts.groupby("patient_id"):
        prev = None
        for _, a in g.iterrows():
            if prev is not None and a["ts"] - prev["ts"] < pd.Timedelta(
                minutes=cfg.quiet_period_minutes
            ):
                assert a["risk"] >= prev["risk"] + cfg.realert_margin - 1e-9
                assert a["reason"] == "risk_rose"
            prev = a
    top = alerts["top_features"].iloc[0]
    assert len(top) == s.serving.top_features
    assert top[0]["feature"] in FEATURE_NAMES
    published = _topic_messages(s, s.kafka.topics.alerts)
    assert sorted(m["alert_id"] for m in published) == sorted(
        _query(s, "SELECT event_id FROM alerts")[i][0] for i in range(len(alerts))
    )
    assert len(_topic_messages(s, s.kafka.topics.predictions)) == summary.scored

    # A restart that reads everything again (a new group) re-scores, but stores nothing twice.
    again = s.model_copy(
        update={"scorer": s.scorer.model_copy(update={"group_id": s.scorer.group_id + "-2"})}
    )
    second = Scorer(again).run(bounded=True)
    assert second.scored == summary.scored
    assert _query(s, "SELECT count(*) FROM predictions WHERE role = 'champion'") == [(total,)]
    assert _query(s, "SELECT count(*) FROM alerts") == [(len(alerts),)]
    assert second.alerts == 0
    assert second.replayed_alerts > 0
    # Whatever the policy's state, a redelivered event is not decided again: even with no
    # quiet period (a policy that alerts on every crossing) a replay raises nothing. (Its
    # crossings need not be the first run's: an event's vector also holds what arrived in
    # the same poll, e.g. a second reading of its minute, and polls differ between runs.)
    eager = s.model_copy(
        update={
            "scorer": s.scorer.model_copy(
                update={"group_id": s.scorer.group_id + "-3", "quiet_period_minutes": 0.0}
            )
        }
    )
    third = Scorer(eager).run(bounded=True)
    assert third.alerts == 0
    assert third.replayed_alerts > 0
    assert _query(s, "SELECT count(*) FROM alerts") == [(len(alerts),)]
    assert len(_topic_messages(s, s.kafka.topics.alerts)) == len(alerts)  # no repeats


def test_moving_champion_mid_stream_swaps_without_errors(
    scorer_settings: Settings, served: dict[str, Any]
) -> None:
    s = scorer_settings
    reg = ModelRegistry(served["settings"])
    simulate_to_kafka(with_simulator(s, seed=31))
    first = Scorer(s).run(bounded=True)

    # Hammer the service while the alias moves: no request may fail.
    failures: list[int] = []
    stop = threading.Event()
    row = dict.fromkeys(FEATURE_NAMES, 0.5)

    def hammer() -> None:
        with httpx.Client(timeout=10) as c:
            while not stop.is_set():
                r = c.post(f"{served['url']}/predict", json={"rows": [row] * 20})
                if r.status_code != 200:
                    failures.append(r.status_code)

    t = threading.Thread(target=hammer)
    t.start()
    try:
        reg.client.set_registered_model_alias(reg.name, CHAMPION, served["challenger"])
        _wait_version(served["url"], served["challenger"])
        time.sleep(1.0)
    finally:
        stop.set()
        t.join()
    assert failures == []
    try:
        simulate_to_kafka(with_simulator(s, seed=32))  # other patients, same topics
        second = Scorer(s).run(bounded=True)
    finally:
        reg.client.set_registered_model_alias(reg.name, CHAMPION, served["champion"])
        reg.client.delete_registered_model_alias(reg.name, CHALLENGER)
        reg.client.set_registered_model_alias(reg.name, CHALLENGER, served["challenger"])
        _wait_version(served["url"], served["champion"])
    assert set(first.versions) == {served["champion"]}
    assert set(second.versions) == {served["challenger"]}
    assert first.scored > 0
    assert second.scored > 0


def test_service_down_mid_stream_loses_nothing_and_duplicates_nothing(
    scorer_settings: Settings, served: dict[str, Any]
) -> None:
    s = scorer_settings
    sent, _ = simulate_to_kafka(with_simulator(s, seed=41))
    proc: ServingProcess = served["proc"]
    scorer = Scorer(s)
    proc.stop()
    result: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: result.update(s=scorer.run(bounded=True)))
    try:
        worker.start()
        time.sleep(6)  # the scorer keeps retrying with backoff meanwhile
        assert worker.is_alive()
        # Its /metrics says so while it waits (polled: joining the group takes a while
        # on a busy machine before the first call fails).
        url = f"http://{s.serving.host}:{s.scorer.metrics_port}/metrics"
        retries, deadline = 0.0, time.monotonic() + 60
        while retries == 0 and time.monotonic() < deadline:
            fams = {m.name: m for m in text_string_to_metric_families(httpx.get(url).text)}
            retries = fams["vigil_scorer_service_retries"].samples[0].value
            time.sleep(0.5)
        assert retries > 0
        assert worker.is_alive()
    finally:
        proc.start_or_explain()
    worker.join(timeout=300)
    summary = result["s"]
    assert summary.retries > 0
    after = {m.name: m for m in text_string_to_metric_families(
        generate_latest(scorer.metrics.registry).decode())}  # fmt: skip
    events = {x.labels["outcome"]: x.value for x in after["vigil_scorer_events"].samples
              if x.name.endswith("_total")}  # fmt: skip
    assert events["scored"] == summary.scored
    kept = sum(v for k, v in events.items() if k not in ("duplicate", "invalid"))
    assert kept == sent.stats.valid_events
    hist = after["vigil_scorer_event_to_prediction_seconds"].samples
    assert next(x.value for x in hist if x.name.endswith("_count")) == summary.scored
    lag = list(after["vigil_scorer_consumer_lag"].samples)
    assert lag
    assert all(x.labels["topic"] == s.kafka.topics.vitals for x in lag)
    assert (
        next(iter(after["vigil_scorer_model_info"].samples)).labels["model_version"]
        == (served["champion"])
    )
    stored = _query(s, "SELECT count(*), count(DISTINCT event_id) FROM predictions "
                       "WHERE role = 'champion'")  # fmt: skip
    assert stored == [(sent.stats.valid_events, sent.stats.valid_events)]


def test_a_model_of_another_feature_set_is_refused(served: dict[str, Any]) -> None:
    s: Settings = served["settings"]
    client = MlflowClient(tracking_uri(s))
    name = f"{s.training.registered_model}-alien"
    src = client.get_model_version(s.training.registered_model, served["champion"])
    mlflow.set_tracking_uri(tracking_uri(s))
    mv = mlflow.register_model(
        src.source, name, tags={**src.tags, "feature_set_version": "vitals-v0"}
    )
    client.set_registered_model_alias(name, CHAMPION, mv.version)
    alien = s.model_copy(
        update={"training": s.training.model_copy(update={"registered_model": name})}
    )
    with pytest.raises(ModelUnavailableError, match="trained on feature set 'vitals-v0'"):
        ModelSlot(alien, CHAMPION, required=True)


def test_columns_score_as_rows_do_and_bad_columns_are_400s_naming_the_column(
    served: dict[str, Any], cohort_rows: pd.DataFrame
) -> None:
    url = served["url"]
    x = cohort_rows[list(FEATURE_NAMES)].iloc[:50]
    client = ServiceClient(url)
    try:
        by_rows = pd.DataFrame(client.predict(x))
        by_columns = client.predict_columns(x)
        shadow = client.predict_columns(x, shadow=True)
        many = cohort_rows[list(FEATURE_NAMES)].iloc[:400]
        explained = client.predict_columns(many, explain=True)
        crossed = explained["alert"].to_numpy()
        assert 0 < crossed.sum() < len(crossed)  # the cohort's rows cross both ways
        by_explain = client.explain(many[crossed])
    finally:
        client.close()
    # With explain, a crossed row carries what /explain says of it; the others None.
    assert explained["top_features"][crossed].tolist() == [e["top_features"] for e in by_explain]
    assert explained["top_features"][~crossed].isna().all()
    assert explained["risk"].iloc[:50].to_numpy() == pytest.approx(by_columns["risk"].to_numpy())
    assert by_columns["risk"].to_numpy() == pytest.approx(by_rows["risk"].to_numpy(), abs=1e-12)
    assert (by_columns["alert"].to_numpy() == by_rows["alert"].to_numpy()).all()
    assert set(by_columns["model_version"]) == {served["champion"]}
    assert set(shadow["model_version"]) == {served["challenger"]}
    assert set(shadow["role"]) == {"shadow"}
    # The JSON spelling of the same columns scores the same (the Arrow one is the client's)
    values = x.to_numpy(dtype=float).T
    body = {
        n: [None if np.isnan(v) else v for v in col]
        for n, col in zip(x, values.tolist(), strict=True)
    }
    by_json = httpx.post(f"{url}/predict_columns", json={"columns": body}).json()
    assert by_json["risk"] == pytest.approx(by_columns["risk"].tolist(), abs=1e-12)
    assert by_json["alert"] == by_columns["alert"].tolist()

    cols = {n: [0.5, None] for n in FEATURE_NAMES}
    name = FEATURE_NAMES[7]
    cases = {
        "ragged": ({**cols, name: [0.5]}, name),
        "missing": ({k: v for k, v in cols.items() if k != name}, name),
        "unknown": ({**cols, "heart_rate_typo": [1.0, 2.0]}, "heart_rate_typo"),
        "wrong type": ({**cols, name: [0.5, "high"]}, name),
        "empty": ({k: [] for k in cols}, FEATURE_NAMES[0]),
        "huge": ({**cols, name: [1e308, 0.5]}, name),  # would overflow the model's scaling
    }
    for case, (body, named) in cases.items():
        r = httpx.post(f"{url}/predict_columns", json={"columns": body})
        assert r.status_code == 400, (case, r.status_code, r.text[:300])
        assert named in r.text, (case, r.text[:300])
    row = {**dict.fromkeys(FEATURE_NAMES, 0.5), name: -1e308}
    r = httpx.post(f"{url}/predict", json={"rows": [row]})
    assert r.status_code == 400, r.text[:300]
    assert name in r.text


def test_arrow_columns_refuse_bad_streams_with_4xx_naming_the_column(
    served: dict[str, Any], cohort_rows: pd.DataFrame
) -> None:
    url = f"{served['url']}/arrow/predict"
    arrow = {"content-type": wire.MEDIA_TYPE}
    x = cohort_rows[list(FEATURE_NAMES)].iloc[:3]
    name = FEATURE_NAMES[7]
    cases = {
        "missing": (
            wire.encode(x.drop(columns=name).to_numpy(), list(x.drop(columns=name))),
            400,
            name,
        ),
        "huge": (wire.encode(x.assign(**{name: 1e308}).to_numpy(), FEATURE_NAMES), 400, name),
        "not arrow": (b'{"columns": {}}', 400, "not an Arrow IPC stream"),
        "truncated": (
            wire.encode(x.to_numpy(), FEATURE_NAMES)[:999],
            400,
            "not an Arrow IPC stream",
        ),
    }
    for case, (body, status, says) in cases.items():
        r = httpx.post(url, content=body, headers=arrow)
        assert r.status_code == status, (case, r.status_code, r.text[:300])
        assert says in r.json()["error"], (case, r.text[:300])
    good = wire.encode(x.to_numpy(), FEATURE_NAMES)
    r = httpx.post(url, content=good, headers={"content-type": "text/csv"})
    assert r.status_code == 415
    assert wire.MEDIA_TYPE in r.json()["error"]
    r = httpx.post(url, params={"shadow": "maybe"}, content=good, headers=arrow)
    assert r.status_code == 422
    assert "shadow" in r.text
    # The service's body limit covers the mounted app too: refused before it is read.
    big = b"\0" * (served["settings"].serving.max_request_bytes + 1)
    r = httpx.post(url, content=big, headers=arrow)
    assert r.status_code == 413, r.text[:300]


# --------------------------------------------------------------------------- fuzzing
_scalar = st.none() | st.booleans() | st.integers() | st.text(max_size=8)
_json = st.recursive(
    _scalar | st.floats(allow_nan=False),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_value = _scalar | st.floats(allow_nan=False, allow_infinity=False)


@st.composite
def _rows_payload(draw: Any) -> Any:
    """Feature rows, each valid or broken in one way (key dropped, added, wrong type)."""
    rows = []
    for _ in range(draw(st.integers(0, 3))):
        row: dict[str, Any] = {n: draw(st.none() | st.floats(-1e6, 1e6)) for n in FEATURE_NAMES}
        how = draw(st.sampled_from(["ok", "drop", "add", "type"]))
        if how == "drop":
            row.pop(draw(st.sampled_from(FEATURE_NAMES)))
        elif how == "add":
            row[draw(st.text(min_size=1, max_size=6))] = draw(_value)
        elif how == "type":
            row[draw(st.sampled_from(FEATURE_NAMES))] = draw(_value)
        rows.append(row)
    return draw(st.sampled_from([{"rows": rows}, rows, {"rows": rows, "x": 1}]))


@st.composite
def _columns_payload(draw: Any) -> Any:
    """Feature columns, valid or broken in one way (ragged, dropped, added, wrong type)."""
    n = draw(st.integers(0, 3))
    cols: dict[str, Any] = {
        name: [draw(st.none() | st.floats(-1e6, 1e6)) for _ in range(n)] for name in FEATURE_NAMES
    }
    how = draw(st.sampled_from(["ok", "ragged", "drop", "add", "type", "scalar"]))
    name = draw(st.sampled_from(FEATURE_NAMES))
    if how == "ragged":
        cols[name] = [*cols[name], 1.0]
    elif how == "drop":
        cols.pop(name)
    elif how == "add":
        cols[draw(st.text(min_size=1, max_size=6))] = [draw(_value)] * n
    elif how == "type":
        cols[name] = [draw(_value)] * max(n, 1)
    elif how == "scalar":
        cols[name] = draw(_value)
    shadow = draw(st.sampled_from([False, True, "yes", None]))
    return draw(st.sampled_from([{"columns": cols}, {"columns": cols, "shadow": shadow}, cols]))


@hsettings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    path=st.sampled_from(
        ["/predict", "/predict_shadow", "/predict_columns", "/explain", "/score_vitals", "/model"]
    ),
    body=_json | _rows_payload() | _columns_payload(),
)
def test_no_input_gets_a_5xx(served: dict[str, Any], path: str, body: Any) -> None:
    r = httpx.post(f"{served['url']}{path}", content=json.dumps(body), timeout=30)
    assert r.status_code < 500, (path, body, r.text[:300])
    if r.status_code >= 400:
        assert r.json()  # a body that says what was wrong


@hsettings(max_examples=40, deadline=None, derandomize=True,
           suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(body=st.binary(max_size=2000), cut=st.integers(0, 4000), flip=st.integers(0, 4000))
def test_no_arrow_body_gets_a_5xx(served: dict[str, Any], body: bytes, cut: int, flip: int) -> None:
    """Random bytes, and a valid stream cut short or with one byte changed."""
    good = bytearray(wire.encode(np.full((1, len(FEATURE_NAMES)), 0.5), FEATURE_NAMES))
    good[flip % len(good)] ^= 0xFF
    for content in (body, bytes(good[: cut % len(good)]), bytes(good)):
        r = httpx.post(f"{served['url']}/arrow/predict", content=content, timeout=30,
                       headers={"content-type": wire.MEDIA_TYPE})  # fmt: skip
        assert r.status_code < 500, (content[:64], r.text[:300])
        if r.status_code >= 400:
            assert r.json()["error"]


def test_the_docs_page_calls_no_third_party_and_works_offline(served: dict[str, Any]) -> None:
    """BentoML's docs page loaded Google Tag Manager in the viewer's browser: the page is
    served without it, under a same-origin Content-Security-Policy, and everything it
    loads is served by the service itself."""
    page = httpx.get(f"{served['url']}/")
    assert page.status_code == 200
    assert "swagger-ui" in page.text
    assert "googletagmanager" not in page.text
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp
    assert "https:" not in csp
    loads = re.findall(r'(?:src|href)="(\./[^"]+)"', page.text)
    assert len(loads) >= 4  # styles, scripts, icons: all relative to the service
    for rel in loads:
        assert httpx.get(f"{served['url']}/{rel[2:]}").status_code == 200, rel
    assert httpx.head(f"{served['url']}/").status_code == 200
    # The document the page renders describes Vigil, without BentoML's README badges
    # (images from public hosts, which the policy would block anyway).
    doc = httpx.get(f"{served['url']}/docs.json").json()
    assert doc["info"]["description"].startswith("Vigil's deterioration-risk service")
    assert "http" not in doc["info"]["description"]


def test_openapi_document_lists_the_endpoints(served: dict[str, Any]) -> None:
    doc = httpx.get(f"{served['url']}/docs.json").json()
    for path in ("/predict", "/predict_shadow", "/predict_columns", "/explain", "/score_vitals",
                 "/readyz", "/metrics"):  # fmt: skip
        assert path in doc["paths"]
    arrow = httpx.get(f"{served['url']}/arrow/openapi.json").json()
    assert "/predict" in arrow["paths"]
    # vigil_predictions appears once something was predicted: predict one row
    # here, so the test does not depend on which tests ran before it.
    row = dict.fromkeys(FEATURE_NAMES, 0.5)
    assert httpx.post(f"{served['url']}/predict", json={"rows": [row]}).status_code == 200
    metrics = httpx.get(f"{served['url']}/metrics").text
    assert (
        f'vigil_model_info{{alias="champion",model="{served["settings"].training.registered_model}"'
        in metrics
    )
    assert "bentoml_service_request_duration_seconds" in metrics
    names = {m.name for m in text_string_to_metric_families(metrics)}
    assert {
        "vigil_model_info",
        "vigil_predictions",
        "bentoml_service_request_duration_seconds",
    } <= (names)


def _predictions_counted(url: str) -> float:
    """The rows a service says (``/metrics``) it has scored."""
    families = text_string_to_metric_families(httpx.get(f"{url}/metrics").text)
    return sum(
        s.value
        for f in families
        if f.name == "vigil_predictions"
        for s in f.samples
        if s.name == "vigil_predictions_total"
    )


def test_each_service_keeps_its_own_metrics(served: dict[str, Any], tmp_path: Path) -> None:
    """A second service (another stack's, a test's) must neither wipe nor show the first
    one's metrics: BentoML's shared multiprocess directory did both."""
    base: Settings = served["settings"]
    url, model = served["url"], base.training.registered_model
    row = dict.fromkeys(FEATURE_NAMES, 0.5)
    assert httpx.post(f"{url}/predict", json={"rows": [row] * 3}).status_code == 200
    before = _predictions_counted(url)
    assert before >= 3
    other = ServingProcess(
        base.model_copy(
            update={
                "run_dir": str(tmp_path / "run"),
                "serving": base.serving.model_copy(update={"port": free_port()}),
                # Another run dir, the same platform: the key that signed the models.
                "mlflow": base.mlflow.model_copy(
                    update={"signing_key": signing_key(base).decode()}
                ),
            }
        )
    )
    other.start_or_explain()
    try:
        assert other.prometheus_dir != served["proc"].prometheus_dir
        assert _predictions_counted(url) == before  # its files survived the other's start
        assert _predictions_counted(other.url) == 0  # and are not the other's
        assert httpx.post(f"{other.url}/predict", json={"rows": [row] * 2}).status_code == 200
        assert _predictions_counted(other.url) == 2
        assert _predictions_counted(url) == before
    finally:
        other.stop()
    metrics = httpx.get(f"{url}/metrics").text
    assert f'vigil_model_info{{alias="champion",model="{model}"' in metrics
    assert _predictions_counted(url) == before


def test_warm_up_calls_the_service_but_keeps_no_state_and_tolerates_its_absence(
    scorer_settings: Settings, served: dict[str, Any]
) -> None:
    def predictions_served() -> float:
        text = httpx.get(f"{served['url']}/metrics").text
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            if family.name == "vigil_predictions"
            for sample in family.samples
            if sample.name == "vigil_predictions_total" and sample.labels["role"] == "champion"
        )

    before = predictions_served()
    scorer = Scorer(scorer_settings)
    scorer._warm_up()
    assert predictions_served() == before + 1  # the made-up event reached the model
    assert scorer.online.patients == 0  # ...through a throwaway state
    assert len(scorer.online.events) == 0
    away = scorer_settings.model_copy(
        update={"serving": scorer_settings.serving.model_copy(update={"port": free_port()})}
    )
    t0 = time.monotonic()
    Scorer(away)._warm_up()  # nothing listens there: logged, not raised
    assert time.monotonic() - t0 < 5


def test_shadow_without_a_challenger_is_a_409_and_the_scorer_goes_on(
    scorer_settings: Settings, served: dict[str, Any]
) -> None:
    reg = ModelRegistry(served["settings"])
    reg.client.delete_registered_model_alias(reg.name, CHALLENGER)
    try:
        deadline = time.monotonic() + 30
        while httpx.post(f"{served['url']}/model", json={}).json()["challenger"] is not None:
            assert time.monotonic() < deadline, "the service kept the removed challenger"
            time.sleep(0.3)
        row = dict.fromkeys(FEATURE_NAMES, 0.5)
        r = httpx.post(f"{served['url']}/predict_shadow", json={"rows": [row]})
        assert r.status_code == 409
        assert "challenger" in r.text
        sent, _ = simulate_to_kafka(with_simulator(scorer_settings, seed=51))
        summary = Scorer(scorer_settings).run(bounded=True)
        assert summary.stored == sent.stats.valid_events
        assert summary.shadow_stored == 0
        assert summary.retries == 0
    finally:
        reg.client.set_registered_model_alias(reg.name, CHALLENGER, served["challenger"])


def _score_process(s: Settings, tmp: Path, *args: str, audit: Path | None = None) -> psutil.Popen:
    cfg = tmp / "scorer.yaml"
    cfg.write_text(yaml.safe_dump(s.model_dump(mode="json")))
    env = dict(os.environ, VIGIL_CONFIG=str(cfg))
    if audit is not None:
        env = as_stream_image(env, audit)
    return psutil.Popen([sys.executable, "-m", "serving", "score", *args], env=env, cwd=REPO_ROOT)


def test_two_workers_share_the_group_and_store_every_event_once(
    scorer_settings: Settings, tmp_path: Path
) -> None:
    s = as_deployed(_faulty(scorer_settings, seed=23))
    sent, _ = simulate_to_kafka(s)
    out, audit = tmp_path / "summary.json", tmp_path / "imports"
    audit.mkdir()
    proc = _score_process(s, tmp_path, "--workers", "2", "--bounded", "--summary-json", str(out),
                          audit=audit)  # fmt: skip
    assert proc.wait(timeout=300) == 0
    # Deployed, with every module the lean stream image does not install refused, the
    # parent and both workers ran it all.
    assert len(audits(audit)) == 3
    assert not imported_outside_the_image(audit)
    summary = json.loads(out.read_text())
    # Kafka split the partitions: both workers scored, and together every event once.
    assert len(summary["per_worker_scored"]) == 2
    assert min(summary["per_worker_scored"]) > 0
    assert sum(summary["per_worker_scored"]) == summary["scored"]
    champion = _query(s, "SELECT count(*), count(DISTINCT event_id), "
                         "count(*) FILTER (WHERE status = 'scored') FROM predictions "
                         "WHERE role = 'champion'")  # fmt: skip
    assert champion == [(sent.stats.valid_events, sent.stats.valid_events, summary["scored"])]
    dead = _query(s, "SELECT count(*) FROM scoring_dead_letters")
    assert dead == [(sum(sent.stats.malformed.values()),)]
    assert summary["records"] == sent.stats.valid_events + summary["duplicates"] + dead[0][0]
    assert summary["latency_p99_ms"] >= summary["latency_p50_ms"] > 0
    assert 0 < summary["first_record_s"] < summary["last_batch_s"] <= summary["seconds"]


def test_workers_stop_when_their_parent_is_killed(
    scorer_settings: Settings, tmp_path: Path
) -> None:
    port = free_port(block=2)  # worker i serves on port + i: both must be free
    s = scorer_settings.with_scorer(metrics_port=port)
    proc = _score_process(s, tmp_path, "--workers", "2")
    try:
        deadline = time.monotonic() + 120
        while True:  # both workers serve their metrics (port, port + 1) once running
            assert time.monotonic() < deadline, "the workers did not start"
            assert proc.poll() is None
            try:
                if all(httpx.get(f"http://127.0.0.1:{p}/metrics").status_code == 200
                       for p in (port, port + 1)):  # fmt: skip
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        workers = proc.children()
        assert len(workers) == 2
        proc.kill()
        _gone, alive = psutil.wait_procs(workers, timeout=30)
        assert not alive, "a worker outlived its parent"
    finally:
        for p in [*proc.children(recursive=True), proc]:
            with contextlib.suppress(psutil.Error):
                p.kill()


def test_a_new_group_at_latest_scores_only_what_comes_after_it_started(
    scorer_settings: Settings,
) -> None:
    """Tansu's high watermark is the last batch's base offset + 1: a group started there
    scored the last batch of history too (minutes-old events in the demo's live part)."""
    history, _ = simulate_to_kafka(with_simulator(scorer_settings, seed=31))
    assert history.stats.valid_events > 1000
    s = scorer_settings.with_scorer(new_group_starts_at="latest", idle_timeout_s=8.0)
    scorer = Scorer(s)
    result: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: result.update(s=scorer.run(bounded=True)))
    worker.start()
    try:
        assert scorer.ready.wait(120), "the scorer did not get its partitions"
        live = with_simulator(s, patients=5, hours=0.5, seed=32)
        sent, _ = simulate_to_kafka(live)
    finally:
        worker.join(timeout=300)
    summary = result["s"]
    stored = _query(s, "SELECT count(*) FROM predictions WHERE role = 'champion'")
    assert stored == [(sent.stats.valid_events,)]  # the live events, and none of history
    assert summary.valid == sent.stats.valid_events + summary.duplicates


def _champion_risks(s: Settings) -> pd.Series:
    rows = _query(s, "SELECT event_id, coalesce(risk, -1) FROM predictions "
                     "WHERE role = 'champion'")  # fmt: skip
    return pd.Series(dict(rows), dtype=float)


def _restart_from(s: Settings, at: float) -> tuple[dict[Any, int], int]:
    """Per partition of ``s``'s topic the offset ``at`` of the way to the end that
    ``s``'s group (which scored it all) committed; the records before them. (Not the
    high watermarks: Tansu reports the last batch's base, so the cut would move with
    how the producer happened to batch.)"""
    client = KafkaClient(s.kafka, endpoints(s).bootstrap_servers)
    parts = client.all_partitions([s.kafka.topics.vitals])
    c = client.consumer(s.scorer.group_id)
    try:
        lows = {tp: lo for tp, (lo, _hi) in c.watermarks(parts).items()}
        ends = c.committed(parts)
    finally:
        c.close()
    cut = {tp: lows[tp] + int(((ends[tp] or lows[tp]) - lows[tp]) * at) for tp in parts}
    return cut, sum(cut[tp] - lows[tp] for tp in parts)


def _restarted(
    s: Settings, cut: dict[Any, int], minutes: int, stays: list[tuple[Any, ...]] | None = None
) -> tuple[Any, pd.Series]:
    """A scorer of a group that had committed ``cut``, into a database of its own (with
    ``stays``: the stay facts the first scorer stored), replaying ``minutes``."""
    client = KafkaClient(s.kafka, endpoints(s).bootstrap_servers)
    group = f"{s.scorer.group_id}-{uuid.uuid4().hex[:4]}"
    c = client.consumer(group)  # the group has scored up to the cut and stopped
    c.assign(list(cut))
    c.commit(cut)
    c.close()
    with _own_database(s) as own:
        migrate(own)
        if stays:
            with psycopg.connect(endpoints(own).database_url) as conn, conn.cursor() as cur:
                cur.executemany("INSERT INTO stay_baselines VALUES (%s, %s, %s, %s, %s, %s)", stays)
        scorer = Scorer(own.with_scorer(group_id=group, warmup_minutes=minutes))
        return scorer.run(bounded=True), _champion_risks(own)


def _same(r: pd.Series, reference: pd.Series) -> float:
    """The share of ``r``'s risks equal to the uninterrupted scorer's."""
    common = r.index.intersection(reference.index)
    assert len(common) == len(r) > 1000
    return float((abs(r[common] - reference[common]) < 1e-12).mean())


def test_a_restarted_scorer_replays_history_and_scores_as_if_it_had_never_stopped(
    scorer_settings: Settings,
) -> None:
    """A scorer started half-way through the topic (a restart, a partition handed over)
    first replays the history before its group's offsets into its online state: its
    vectors, hence risks, are the uninterrupted scorer's. Without the replay every
    patient's windows start empty."""
    s = with_simulator(scorer_settings, seed=41)
    simulate_to_kafka(s)
    whole = Scorer(s).run(bounded=True)
    assert whole.replayed_events == 0  # a new group from the start: nothing before it
    reference = _champion_risks(s)
    cut, before = _restart_from(s, 0.5)

    replayed, risks = _restarted(s, cut, 300)
    assert replayed.records == whole.records - before  # only what was not committed
    # The whole first half of this 2.5-hour ward is within 300 minutes: all replayed.
    assert replayed.replayed_events == whole.valid - replayed.valid
    assert replayed.takeovers == 1
    cold, cold_risks = _restarted(s, cut, 0)
    assert cold.replayed_events == 0
    # An event's vector also holds what came in its poll (a later reading of its minute),
    # and polls differ between runs: two uninterrupted runs agree on 94-100 % of risks.
    # The replay is at that floor; without it, no risk of the second half is the same.
    assert _same(risks, reference) > 0.85
    assert _same(cold_risks, reference) < 0.1


def test_stays_older_than_the_replay_get_their_start_and_first_hours_back(
    scorer_settings: Settings,
) -> None:
    """Restarted about 7 hours into an 8-hour ward, the replay of 300 minutes begins
    after most stays did: their first minute and first-hours sums come from the facts
    the first scorer stored (``stay_baselines``) once they were final."""
    s = with_simulator(scorer_settings, seed=42, patients=20, hours=8)
    simulate_to_kafka(s)
    whole = Scorer(s).run(bounded=True)
    assert whole.restored_stays == 0  # a new group from the start: nothing to restore
    reference = _champion_risks(s)
    stays = _query(s, "SELECT * FROM stay_baselines")
    assert len(stays) >= 15  # nearly every stay's first hours became final in 8 hours
    cut, _before = _restart_from(s, 0.85)
    with_stays, risks = _restarted(s, cut, 300, stays)
    assert with_stays.restored_stays > 10
    without, risks_without = _restarted(s, cut, 300)
    assert without.restored_stays == 0
    # With the facts: at the floor of two uninterrupted runs (94-100 %, polls differ).
    assert _same(risks, reference) > 0.85
    # The stays that began well before the replayed history: without the facts, their
    # stay_minutes and baselines are wrong in every vector; with them, as uninterrupted.
    event_ts = dict(_query(s, "SELECT event_id, ts FROM predictions WHERE role = 'champion'"))
    patient = dict(
        _query(s, "SELECT event_id, patient_id FROM predictions WHERE role = 'champion'")
    )
    restart_ts = min(event_ts[e] for e in risks.index)
    older = {p for p, _fs, first, *_ in stays if first < restart_ts - pd.Timedelta(minutes=320)}
    assert len(older) >= 5
    theirs = [e for e in risks.index if patient[e] in older]
    assert len(theirs) > 200

    def share(r: pd.Series) -> float:
        return float((abs(r[theirs] - reference[theirs]) < 1e-12).mean())

    assert share(risks) > 0.85
    assert share(risks_without) < 0.2


def test_a_takeover_reads_every_admission_before_it_scores(scorer_settings: Settings) -> None:
    """The first batch's vectors need the patients' ages, sexes and SpO2 scales: a fresh
    consumer's first poll returns nothing yet, so the scorer's first batch after a start
    was scored without them."""
    sent, _ = simulate_to_kafka(with_simulator(scorer_settings, seed=43))
    scorer = Scorer(scorer_settings)
    adm = Admissions(scorer.kafka, scorer_settings.kafka.topics.admissions,
                     scorer.adm_validator, scorer.online)  # fmt: skip
    try:
        adm.read(to_end=True)
        assert scorer.online.admissions == sent.stats.admissions > 0
    finally:
        adm.close()
