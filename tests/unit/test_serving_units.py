"""Serving's pure parts: the alert policy, explanations, the request guard."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pandas as pd
import pytest

from features.alerts import AlertPolicy
from serving.explain import contributions, is_cheap, top_features
from serving.guard import Guard
from training.models import build

T0 = pd.Timestamp("2026-01-05 10:00", tz="UTC")


def _scored(rows: list[tuple[str, int, float, bool]]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"patient_id": p, "ts": T0 + pd.Timedelta(minutes=m), "risk": r, "alert": a}
            for p, m, r, a in rows
        ]
    )


def test_quiet_period_suppresses_repeats_and_a_rise_re_alerts() -> None:
    policy = AlertPolicy(quiet_period=pd.Timedelta(minutes=60), margin=0.15)
    scored = _scored(
        [
            ("a", 0, 0.70, True),  # first
            ("a", 5, 0.75, True),  # within quiet period, rose only 0.05: suppressed
            ("a", 10, 0.86, True),  # rose 0.16 over the last alert: re-alert
            ("a", 20, 0.95, True),  # rose 0.09 over 0.86: suppressed
            ("a", 71, 0.60, True),  # quiet period over (61 min after the 0.86 alert)
            ("b", 3, 0.40, False),  # under the threshold: never an alert
            ("b", 4, 0.65, True),  # another patient's first
        ]
    )
    reasons = policy.decide(scored).tolist()
    assert reasons == [
        "first", None, "risk_rose", None, "quiet_period_over", None, "first",
    ]  # fmt: skip


def test_policy_uses_event_time_so_a_replay_decides_the_same() -> None:
    scored = _scored([("a", m, 0.8, True) for m in range(0, 200, 5)]).sample(
        frac=1, random_state=3
    )  # arrival order scrambled
    a = AlertPolicy(quiet_period=pd.Timedelta(minutes=60), margin=0.15).decide(scored)
    b = AlertPolicy(quiet_period=pd.Timedelta(minutes=60), margin=0.15).decide(scored)
    assert a.equals(b)
    raised = scored.loc[a.notna(), "ts"].sort_values()
    assert (raised.diff().dropna() >= pd.Timedelta(minutes=60)).all()
    assert len(raised) == 4  # minutes 0, 60, 120, 180


def test_remembered_alerts_count_after_a_restart() -> None:
    policy = AlertPolicy(quiet_period=pd.Timedelta(minutes=60), margin=0.15)
    policy.remember("a", T0, 0.8)
    assert policy.decide(_scored([("a", 30, 0.85, True)])).tolist() == [None]
    assert policy.decide(_scored([("a", 30, 0.96, True)])).tolist() == ["risk_rose"]


def _data(n: int = 3000) -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(0)
    x = pd.DataFrame(rng.normal(size=(n, 4)), columns=["a", "b", "c", "d"])
    y = pd.Series((2 * x["a"] - x["c"] + rng.normal(scale=0.5, size=n) > 1.5).astype(int))
    return x, y


def test_linear_contributions_are_coefficient_times_standardised_value() -> None:
    x, y = _data()
    model = build("logistic_regression", {"C": 1.0}, positive_share=0.2, seed=0, n_jobs=1)
    model.fit(x, y)
    c = contributions(model, x.head(5))
    z = (x.head(5) - x.median() * 0).to_numpy()  # imputer is a no-op without NaN
    scale = model.named_steps["scale"]
    expect = (z - scale.mean_) / scale.scale_ * model.named_steps["model"].coef_[0]
    assert np.allclose(c, expect)


def test_xgboost_contributions_sum_to_the_margin() -> None:
    x, y = _data()
    model = build("xgboost", {"n_estimators": 30, "max_depth": 3}, positive_share=0.2, seed=0,
                  n_jobs=1)  # fmt: skip
    model.fit(x, y)
    c = contributions(model, x.head(8))
    margin = model.predict(x.head(8), output_margin=True)
    bias = margin - c.sum(axis=1)
    assert np.allclose(bias, bias[0], atol=1e-4)  # the same bias for every row


@pytest.mark.parametrize("family", ["logistic_regression", "random_forest", "xgboost"])
def test_top_features_name_the_planted_drivers(family: Any) -> None:
    x, y = _data()
    params = {"logistic_regression": {"C": 1.0}, "random_forest": {"n_estimators": 30,
              "min_samples_leaf": 20}, "xgboost": {"n_estimators": 40}}[family]  # fmt: skip
    model = build(family, params, positive_share=0.2, seed=0, n_jobs=1).fit(x, y)
    risky = x[(x["a"] > 1.5) & (x["c"] < -1.0)].head(3).copy()
    risky.iloc[0, 1] = np.nan  # a missing value is reported as None
    tops = top_features(model, risky, 2)
    assert len(tops) == len(risky)
    for t in tops:
        assert {d["feature"] for d in t} == {"a", "c"}
        assert all(d["contribution"] > 0 for d in t)


def test_only_exact_explainers_count_as_cheap_enough_for_the_scoring_path() -> None:
    x, y = _data(500)
    params = {"logistic_regression": {"C": 1.0}, "random_forest": {"n_estimators": 5},
              "xgboost": {"n_estimators": 5}}  # fmt: skip
    cheap = {
        family: is_cheap(build(family, p, positive_share=0.2, seed=0, n_jobs=1).fit(x, y))
        for family, p in params.items()
    }
    assert cheap == {"logistic_regression": True, "random_forest": False, "xgboost": True}


# --------------------------------------------------------------------------- guard
JSON_BODY = [(b"content-type", b"application/json")]


def _call(
    app_kwargs: dict[str, Any],
    path: str,
    headers: list[tuple[bytes, bytes]],
    chunks: list[bytes] = (b"",),  # type: ignore[assignment]
    method: str = "POST",
) -> list[Any]:
    """``[paths the app was reached with, the guard's own status or None, body the app
    read]`` for a request whose body streams in as ``chunks`` (no Content-Length: chunked)."""
    sent: list[Any] = []
    reached: list[str] = []
    body: list[bytes] = []
    stream = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    ]

    async def receive() -> Any:
        return stream.pop(0) if stream else {"type": "http.disconnect"}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        reached.append(scope["path"])
        while True:
            m = await receive()
            body.append(m.get("body", b""))
            if not m.get("more_body"):
                break

    async def send(msg: Any) -> None:
        sent.append(msg)

    guard = Guard(app, **app_kwargs)
    scope = {"type": "http", "path": path, "headers": headers, "method": method}
    asyncio.run(guard(scope, receive, send))
    return [reached, sent[0]["status"] if sent else None, b"".join(body)]


def test_guard_limits_body_size_and_checks_the_api_key() -> None:
    big = [(b"content-length", b"2000"), *JSON_BODY]
    assert _call({"api_key": None, "max_bytes": 1000}, "/predict", big)[:2] == [[], 413]
    assert _call({"api_key": None, "max_bytes": 5000}, "/predict", big)[:2] == [["/predict"], None]
    bogus = [(b"content-length", b"12abc"), *JSON_BODY]
    assert _call({"api_key": None, "max_bytes": 5000}, "/predict", bogus)[:2] == [[], 413]
    keyed = {"api_key": "s3cret", "max_bytes": 5000}
    assert _call(keyed, "/predict", JSON_BODY)[:2] == [[], 401]
    assert _call(keyed, "/predict", [(b"x-api-key", b"wrong"), *JSON_BODY])[:2] == [[], 401]
    assert _call(keyed, "/predict", [(b"x-api-key", b"s3cret\x00"), *JSON_BODY])[1] == 401
    ok = [(b"x-api-key", b"s3cret"), *JSON_BODY]
    assert _call(keyed, "/predict", ok)[:2] == [["/predict"], None]
    assert _call(keyed, "/arrow/predict", [])[:2] == [[], 401]  # the mounted Arrow route too
    assert _call(keyed, "/readyz", [], method="GET")[:2] == [["/readyz"], None]  # probes open


def test_guard_counts_a_chunked_body_as_it_streams_in() -> None:
    """The limit only checked Content-Length: a 12.9 MB chunked body was scored (200)."""
    limits = {"api_key": None, "max_bytes": 1000}
    chunks = [b"x" * 400] * 3  # 1,200 bytes, no length declared
    assert _call(limits, "/predict", JSON_BODY, chunks)[:2] == [[], 413]
    assert _call(limits, "/metrics", [], chunks, method="GET")[:2] == [[], 413]
    fits = [b"x" * 400, b"y" * 400, b"z" * 200]  # exactly the limit: passed on whole
    reached, status, body = _call(limits, "/predict", JSON_BODY, fits)
    assert (reached, status, body) == (["/predict"], None, b"".join(fits))


@pytest.mark.parametrize(
    ("path", "kind", "status"),
    [
        ("/predict", b"application/json", None),
        ("/predict", b"Application/JSON; charset=utf-8", None),
        ("/predict", b"text/plain", 415),
        ("/predict", b"", 415),
        ("/score_vitals", b"application/x-www-form-urlencoded", 415),
        ("/arrow/predict", b"application/json", 415),
        ("/arrow/predict", b"application/vnd.apache.arrow.stream", None),
        ("/metrics", b"text/plain", None),  # not a scoring endpoint
    ],
)
def test_guard_enforces_each_endpoints_content_type(
    path: str, kind: bytes, status: int | None
) -> None:
    headers = [(b"content-type", kind)] if kind else []
    assert _call({"api_key": None, "max_bytes": 1000}, path, headers)[1] == status


def test_scorer_summary_keeps_recent_latencies_only() -> None:
    from serving.summary import LATENCY_WINDOW, ScoreSummary

    s = ScoreSummary()
    s.latency_ms.extend([1000.0] * LATENCY_WINDOW)  # an old backlog...
    s.latency_ms.extend([10.0] * LATENCY_WINDOW)  # ...then weeks of fast scoring
    assert len(s.latency_ms) == LATENCY_WINDOW
    assert s.to_dict()["latency_p99_ms"] == 10.0


def test_laps_time_each_step_into_the_summary_and_the_histogram() -> None:
    import time

    from serving.metrics import ScorerMetrics
    from serving.summary import Laps as _Laps
    from serving.summary import ScoreSummary

    summary, metrics = ScoreSummary(), ScorerMetrics()
    laps = _Laps(summary, metrics)
    time.sleep(0.02)
    laps.lap("features")
    laps.lap("score")
    time.sleep(0.01)
    laps.lap("features")
    assert summary.step_seconds["features"] >= 0.03
    assert summary.step_seconds["score"] < 0.01
    count = metrics.registry.get_sample_value(
        "vigil_scorer_step_seconds_count", {"step": "features"}
    )
    assert count == 2
    assert summary.to_dict()["step_seconds"]["features"] >= 0.03


def test_scorer_summary_keeps_the_slowest_batches_with_their_steps() -> None:
    from serving.summary import SLOWEST_KEPT, ScoreSummary

    s = ScoreSummary()
    for i in range(20):
        s.note_batch(100 + i, {"features": 0.01, "score": 0.01 * (i % 7)})
        s.batches += 1
    kept = s.to_dict()["slowest_batches"]
    assert len(kept) == SLOWEST_KEPT
    assert [b["seconds"] for b in kept] == sorted((b["seconds"] for b in kept), reverse=True)
    assert kept[0] == {"seconds": 0.07, "events": 106, "batch": 6,
                       "steps": {"features": 0.01, "score": 0.06}}  # fmt: skip
    assert all(b["steps"]["score"] >= 0.04 for b in kept)  # i % 7 in (4, 5, 6) only


def test_laps_add_up_a_step_lapped_twice_in_one_batch() -> None:
    from serving.metrics import ScorerMetrics
    from serving.summary import Laps as _Laps
    from serving.summary import ScoreSummary

    laps = _Laps(ScoreSummary(), ScorerMetrics())
    laps.t -= 0.5
    laps.lap("score")
    laps.t -= 0.25
    laps.lap("score")
    assert laps.steps["score"] >= 0.75


def test_freezing_the_startup_heap_exempts_it_from_collections() -> None:
    import gc

    from stack.gctune import freeze_startup_heap

    try:
        frozen = freeze_startup_heap()
        assert frozen > 10_000  # pytest, pandas, ... are in it
        # Frozen objects can still die (refcounting; another thread may drop one), never join.
        assert 0 < gc.get_freeze_count() <= frozen
        # A full collection now walks only what was made since: far fewer objects.
        assert len(gc.get_objects()) < frozen
    finally:
        gc.unfreeze()
    assert gc.get_freeze_count() == 0


def test_scorer_summary_drain_rate_leaves_out_startup_and_the_idle_tail() -> None:
    from serving.summary import ScoreSummary

    s = ScoreSummary(scored=10_000, seconds=30.0)
    assert s.to_dict()["drain_events_per_s"] == 0.0  # no data seen: no rate
    s.first_record_s, s.last_batch_s = 4.0, 24.0  # joined the group at 4 s, idle after 24 s
    assert s.drain_rate == 500.0
    assert s.to_dict()["events_per_s"] == 10_000 / 30.0


def test_a_poll_s_batches_read_end_to_end_with_each_record_and_the_offsets_to_commit() -> None:
    from stack.consume import Polled
    from stack.kafka import PartitionBatch, Record, TopicPartition

    polled = Polled([
        PartitionBatch("v", 2, [10, 11, 12], [1000, 1001, 1002], [b"a", b"b", None],
                       [b"x", None, b"z"]),
        PartitionBatch("v", 0, [], [], [], []),  # an empty batch is left out
        PartitionBatch("v", 0, [7], [999], [b"c"], [b"w"]),
    ])  # fmt: skip
    assert len(polled) == 4
    assert polled.values == [b"x", None, b"z", b"w"]  # a null value: an empty message
    assert polled.timestamps_ms.tolist() == [1000, 1001, 1002, 999]
    assert polled.record(1) == Record("v", 2, 11, b"b", None, 1001)
    assert polled.record(3) == Record("v", 0, 7, b"c", b"w", 999)
    assert polled.next_offsets() == {TopicPartition("v", 2): 13, TopicPartition("v", 0): 8}


def _features_data(rows: int = 600) -> tuple[pd.DataFrame, np.ndarray]:
    from features.spec import FEATURE_NAMES

    rng = np.random.default_rng(3)
    x = pd.DataFrame(rng.normal(size=(rows, len(FEATURE_NAMES))), columns=list(FEATURE_NAMES))
    x = x.mask(rng.random(x.shape) < 0.2)
    y = ((x.iloc[:, 0].fillna(0) + x.iloc[:, 5].fillna(0)) > 0.8).to_numpy(dtype=int)
    return x, y


@pytest.mark.parametrize("early_stopping", [False, True])
def test_xgboost_is_served_straight_from_the_matrix_with_predict_proba_s_numbers(
    early_stopping: bool,
) -> None:
    from serving.model import LoadedModel

    x, y = _features_data()
    model = build("xgboost", {"n_estimators": 60, "max_depth": 3}, positive_share=0.3, seed=0,
                  n_jobs=1)  # fmt: skip
    if early_stopping:  # predict_proba then uses the best iteration only
        model.set_params(early_stopping_rounds=3)
        model.fit(x[:400], y[:400], eval_set=[(x[400:], y[400:])], verbose=False)
        assert model.best_iteration < 59
    else:
        model.fit(x, y)
    m = LoadedModel("m", "champion", "1", 0.5, "v", model)
    assert m._direct is not None
    expected = model.predict_proba(x)[:, 1].astype(float)
    np.testing.assert_array_equal(m.risk(x), expected)
    np.testing.assert_array_equal(m.risk(x[x.columns[::-1]]), expected)  # columns by name


def test_other_models_keep_predict_proba() -> None:
    from serving.model import LoadedModel

    x, y = _features_data()
    for family, params in (("logistic_regression", {"C": 1.0}),
                           ("random_forest", {"n_estimators": 5})):  # fmt: skip
        model = build(family, params, positive_share=0.3, seed=0, n_jobs=1).fit(x.fillna(0), y)
        m = LoadedModel("m", "champion", "1", 0.5, "v", model)
        assert m._direct is None
        np.testing.assert_array_equal(m.risk(x.fillna(0)), model.predict_proba(x.fillna(0))[:, 1])
