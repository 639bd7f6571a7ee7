"""Training/serving parity: the online state gives the batch path's vectors, to 1e-9.

The batch reference here is the ETL's pandas core (dedupe, ``clean_events``,
``to_minutes``) plus ``features_for_patient``, exactly what Spark runs per partition;
``tests/integration/test_features_job.py`` repeats the comparison through real Spark.

A vector at feature time *T* is compared as soon as the stream has delivered every event
of that patient up to *T* — so events that arrive late (out of order) must have been
folded into the right minutes, and nothing after *T* may have leaked in.
"""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.cleaning import STATUS_OK, VITALS, clean_events
from features.online import OnlineFeatures
from features.resample import to_minutes
from features.spec import FEATURE_NAMES
from features.transform import features_for_patient, static_vector
from pipelines.simulator.engine import WardSimulator
from stack.batchvalidate import BatchValidator
from stack.contracts import AdmissionEvent, VitalsEvent
from stack.settings import load_settings

NOW = pd.Timestamp("2026-06-01", tz="UTC")
FAULTY = {
    "artifact": 0.01, "impossible": 0.004, "missing": 0.05, "duplicate": 0.01, "late": 0.02,
    "malformed": 0.002, "fahrenheit_device": 0.1,
}  # fmt: skip


def reference_features(
    events: pd.DataFrame, admissions: pd.DataFrame, cadence: int = 5
) -> pd.DataFrame:
    first = events.drop_duplicates("event_id")
    ordered = first.sort_values(["patient_id", "ts", "event_id"], kind="stable")
    cleaned, _ = clean_events(ordered)
    minutes = to_minutes(cleaned[cleaned["status"] == STATUS_OK])
    adm = admissions.set_index("patient_id").to_dict("index") if len(admissions) else {}
    parts = [
        features_for_patient(g, static_vector(adm.get(p)), cadence_minutes=cadence)
        for p, g in minutes.groupby("patient_id", sort=True)
    ]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def _completion(events: pd.DataFrame, rows: pd.DataFrame) -> np.ndarray:
    """Per batch row: arrival position after which all its patient's events ≤ T are in
    (first arrivals only: a resent duplicate brings nothing new)."""
    ev = pd.DataFrame(
        {
            "patient_id": events["patient_id"].to_numpy(),
            "minute": events["ts"].dt.floor("min").to_numpy(),
            "pos": np.arange(len(events)),
        }
    )
    ev = ev[~events["event_id"].duplicated().to_numpy()].sort_values(["patient_id", "minute"])
    ev["reach"] = ev.groupby("patient_id")["pos"].cummax()
    out = np.empty(len(rows), dtype=np.int64)
    as_of = rows["ts"] - pd.Timedelta(minutes=1)
    for pid, idx in rows.groupby("patient_id").indices.items():
        e = ev[ev["patient_id"] == pid]
        k = np.searchsorted(e["minute"].to_numpy(), as_of.iloc[idx].to_numpy(), side="right")
        out[idx] = e["reach"].to_numpy()[k - 1]
    return out


def stream_and_compare(
    events: pd.DataFrame,
    admissions: pd.DataFrame,
    batch: int,
    ref: pd.DataFrame | None = None,
    lateness_minutes: int = 45,
) -> tuple[int, int, list[str]]:
    """Feed ``events`` (arrival order) in polls of ``batch``; compare each batch row once
    all its inputs have arrived. Returns (compared, total, mismatches).

    A row the online state can no longer answer when it completes (a poll batch carried
    the patient further ahead than the state's lateness bound) is not compared; with
    ``batch=1`` that cannot happen. ``ref`` defaults to :func:`reference_features`; the
    Spark integration test passes the feature job's output instead.
    """
    if ref is None:
        ref = reference_features(events, admissions)
    if ref.empty:
        return 0, 0, []
    done = _completion(events, ref)
    online = OnlineFeatures(capacity=4, lateness_minutes=lateness_minutes)
    online.admit(admissions)
    pending = np.ones(len(ref), dtype=bool)
    compared = 0
    bad: list[str] = []
    for a in range(0, len(events), batch):
        online.update(events.iloc[a : a + batch], now=NOW)
        ready = np.nonzero(pending & (done < a + batch))[0]
        pending[ready] = False
        rows = ref.iloc[ready]
        ready = ready[online.answerable(rows["patient_id"].tolist(), rows["ts"])]
        if len(ready) == 0:
            continue
        rows = ref.iloc[ready]
        got = online.features_at(rows["patient_id"].tolist(), rows["ts"])
        x = rows[list(FEATURE_NAMES)].to_numpy()
        y = got[list(FEATURE_NAMES)].to_numpy()
        ok = np.isclose(x, y, rtol=1e-9, atol=1e-9, equal_nan=True)
        for i in np.nonzero(~ok.all(axis=1))[0][:3]:
            cols = [FEATURE_NAMES[j] for j in np.nonzero(~ok[i])[0]]
            bad.append(f"{rows['patient_id'].iloc[i]} @ {rows['ts'].iloc[i]}: {cols[:6]}")
        compared += len(ready)
    # Only a resent duplicate can arrive later than the online state's lateness bound.
    assert online.counts["too_late"] <= len(events) - events["event_id"].nunique()
    return compared, len(ref), bad


def _simulated(seed: int, patients: int, hours: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    base = load_settings(environ={}).simulator
    cfg = base.model_copy(
        update={
            "seed": seed,
            "patients": patients,
            "hours": hours,
            "faults": base.faults.model_copy(update=FAULTY),
        }
    )
    vitals: list[bytes] = []
    adm: list[bytes] = []
    for chunk in WardSimulator(cfg).messages():
        for role, _key, value, _emit in chunk:
            if role == "vitals":
                vitals.append(value)
            elif role == "admissions":
                adm.append(value)
    ev = BatchValidator(VitalsEvent).validate(vitals).table.to_pandas()
    ad = BatchValidator(AdmissionEvent).validate(adm).table.to_pandas()
    return ev.drop(columns="_index"), ad.drop(columns="_index")


def test_online_equals_batch_on_the_seeded_simulator_with_faults() -> None:
    events, admissions = _simulated(seed=11, patients=40, hours=8)
    late = (events["ts"].diff().dt.total_seconds() < -60).sum()
    assert late > 10  # out-of-order arrivals are really in the stream
    compared, total, bad = stream_and_compare(events, admissions, batch=150)
    assert not bad, bad[:5]
    assert total > 3000
    assert compared == total


# ------------------------------------------------------------------ property-based
_VITAL_VALUES = {
    "heart_rate": st.one_of(st.floats(35, 170), st.sampled_from([10.0, 190.0, 400.0])),
    "systolic_bp": st.floats(60, 230),
    "diastolic_bp": st.floats(30, 130),
    "spo2": st.one_of(st.floats(80, 100), st.sampled_from([20.0, 45.0, 65.0, 101.0])),
    "resp_rate": st.floats(5, 40),
    "temperature": st.one_of(st.floats(34, 41), st.floats(95, 104), st.just(0.0)),
}


@st.composite
def _streams(draw: Any) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    rows = []
    admissions = []
    for p in range(draw(st.integers(1, 3))):
        pid = f"pt-{p}"
        if draw(st.booleans()):
            admissions.append(
                {"patient_id": pid, "age": draw(st.integers(18, 99)), "sex": "F", "spo2_scale": 2}
            )
        t = draw(st.floats(0, 30))
        for _ in range(draw(st.integers(1, 80))):
            t += draw(st.one_of(st.floats(0.05, 3.0), st.floats(3.0, 120.0)))  # gaps
            row: dict[str, Any] = {
                "event_id": str(uuid.UUID(int=len(rows) * 2**64 + draw(st.integers(0, 2**32)))),
                "patient_id": pid,
                "ts": pd.Timestamp("2026-01-05", tz="UTC") + pd.Timedelta(minutes=t),
            }
            for v in VITALS:
                row[v] = draw(_VITAL_VALUES[v]) if draw(st.floats(0, 1)) > 0.25 else None
            row["consciousness"] = draw(st.sampled_from(["A", "A", "A", "C", "V", None]))
            row["on_oxygen"] = draw(st.sampled_from([True, False, None]))
            rows.append(row)
    events = pd.DataFrame(rows)
    # Arrival order: sorted by time, then some events held back by up to 30 minutes.
    delay = [draw(st.sampled_from([0.0, 0.0, 0.0, 5.0, 29.0])) for _ in range(len(events))]
    arrival = events["ts"] + pd.to_timedelta(delay, unit="min")
    events = events.iloc[np.argsort(arrival.to_numpy(), kind="stable")].reset_index(drop=True)
    if draw(st.booleans()) and len(events) > 3:  # resent duplicates: soon, and much later
        events = pd.concat([events.iloc[:3], events.iloc[[1]], events.iloc[3:]])
        events = pd.concat([events, events.iloc[[2]]], ignore_index=True)
    for v in VITALS:
        events[v] = events[v].astype("float64")
    events["ts"] = events["ts"].astype("datetime64[us, UTC]")
    adm = pd.DataFrame(admissions, columns=["patient_id", "age", "sex", "spo2_scale"])
    return events, adm, draw(st.integers(1, 40))


@pytest.mark.slow  # ~40 s: part of `make test`, not of the `make test-fast` loop
@settings(
    max_examples=30,
    deadline=None,
    derandomize=True,  # the same examples in CI every time; widen locally with a profile
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(_streams())
def test_online_equals_batch_for_any_stream(stream: tuple[pd.DataFrame, pd.DataFrame, int]) -> None:
    events, admissions, batch = stream
    _compared, _total, bad = stream_and_compare(events, admissions, batch)
    assert not bad, bad
    # One event per poll: every batch row is answerable when it completes.
    compared, total, bad = stream_and_compare(events, admissions, 1)
    assert not bad, bad
    assert compared == total


def test_no_look_ahead_perturbing_the_future_changes_nothing_before_it() -> None:
    events, admissions = _simulated(seed=5, patients=30, hours=8)
    cut = events["ts"].min() + pd.Timedelta(hours=5)
    before = reference_features(events, admissions)
    later = events["ts"] >= cut
    rng = np.random.default_rng(0)
    changed = events.copy()
    for v in VITALS:
        changed.loc[later, v] = changed.loc[later, v] * rng.uniform(0.5, 1.5, later.sum())
    changed.loc[later, "consciousness"] = "U"
    after = reference_features(changed, admissions)
    keep_b, keep_a = before["ts"] <= cut, after["ts"] <= cut
    x = before.loc[keep_b, list(FEATURE_NAMES)].to_numpy()
    y = after.loc[keep_a, list(FEATURE_NAMES)].to_numpy()
    assert x.shape == y.shape
    assert len(x) > 1000
    assert np.array_equal(x, y, equal_nan=True)
    # ... and it did change features after the cut, so the perturbation was real.
    assert not np.array_equal(
        before.loc[~keep_b, list(FEATURE_NAMES)].to_numpy(),
        after.loc[~keep_a, list(FEATURE_NAMES)].to_numpy(),
        equal_nan=True,
    )


def test_online_state_is_bounded_by_the_longest_window() -> None:
    events, admissions = _simulated(seed=2, patients=20, hours=12)
    online = OnlineFeatures(capacity=32)
    online.admit(admissions)
    sizes = []
    for a in range(0, len(events), 2000):
        online.update(events.iloc[a : a + 2000], now=NOW)
        sizes.append(len(online.events))
    # Retained raw events stay at ~(lateness + context) minutes per patient, not the stay.
    per_patient_minutes = online.lateness + 12
    assert max(sizes) <= 20 * per_patient_minutes * 2
    assert sizes[-1] < len(events) / 5
    assert online.memory_bytes() < 50 * 2**20
    assert orjson.dumps(dict(online.counts))  # counters are plain data for metrics


def test_retained_events_are_looked_up_in_arrival_order_and_expire_whole() -> None:
    from features.online import _KINDS, _RETAINED, _Retained

    def chunk(slots: list[int], minutes: list[int], tag: str) -> dict[str, np.ndarray]:
        n = len(slots)
        cols = {c: np.zeros(n, dtype=_KINDS[c]) for c in _RETAINED}
        cols["event_id"] = np.array([f"{tag}{i}" for i in range(n)], dtype=object)
        cols["_slot"] = np.array(slots, dtype=np.int64)
        cols["_minute"] = np.array(minutes, dtype=np.int64)
        return cols

    r = _Retained()
    r.append(chunk([0, 1], [10, 11], "a"))
    r.append(chunk([1, 0], [20, 21], "b"))
    r.append(chunk([], [], "empty"))  # an empty poll adds no chunk
    r.append(chunk([0], [15], "c"))  # a late event arrives last
    assert len(r) == 5
    assert len(r.chunks) == 3
    got = r.where(lambda slot, m: (slot == 0) & (m >= 12), since=12)
    assert got["event_id"].tolist() == ["b1", "c0"]  # arrival order, not time order
    # The chunk with nothing at or after `since` is not even looked at.
    seen: list[int] = []

    def recent(slot: np.ndarray, m: np.ndarray) -> np.ndarray:
        seen.append(len(m))
        return m >= 18

    r.where(recent, since=18)
    assert seen == [2]
    empty = r.where(lambda slot, m: m > 99, since=0)
    shapes = {c: (len(a), a.dtype) for c, a in empty.items()}
    assert shapes == {c: (0, _KINDS[c]) for c in _RETAINED}
    gone = r.expire(lambda slot, m: m < 16)
    assert sorted(gone) == ["a0", "a1", "c0"]
    assert len(r) == 2
    assert len(r.chunks) == 1
    assert r.where(lambda slot, m: m >= 0, since=0)["event_id"].tolist() == ["b0", "b1"]


@given(
    st.lists(st.tuples(st.integers(0, 4), st.integers(-(10**7), 10**7)), min_size=0, max_size=60)
)
@settings(max_examples=200, deadline=None)
def test_group_helpers_match_pandas_groupby(rows: list[tuple[int, int]]) -> None:
    from features.online import _group_cummax, _group_min_max

    groups = np.array([g for g, _ in rows], dtype=np.int64)
    values = np.array([v for _, v in rows], dtype=np.int64)
    expected = pd.Series(values).groupby(groups).cummax().to_numpy()
    assert np.array_equal(_group_cummax(groups, values), expected)
    if len(rows):
        lo, hi = _group_min_max(groups, values)
        by = pd.Series(values).groupby(groups)
        present = np.unique(groups)
        assert np.array_equal(lo[present], by.min().to_numpy())
        assert np.array_equal(hi[present], by.max().to_numpy())


# ------------------------------------------------------------------ restart and replay
def _replay_start(events: pd.DataFrame, end: int, minutes: int) -> tuple[int, int]:
    """Where a history replay of ``minutes`` before arrival ``end`` starts (as the scorer
    finds it: bisection on the median event minute of 64 arrivals), and its cut minute."""
    from serving.replay import PROBE_RECORDS, first_offset_since

    ts = events["ts"].to_numpy("datetime64[m]").astype(np.int64)

    def minute_at(o: int) -> float:
        return float(np.median(ts[o : min(o + PROBE_RECORDS, end)]))

    since = minute_at(max(0, end - PROBE_RECORDS)) - minutes
    return first_offset_since(minute_at, 0, end, since), int(since)


def _fold(online: OnlineFeatures, events: pd.DataFrame, batch: int = 150) -> None:
    for a in range(0, len(events), batch):
        online.update(events.iloc[a : a + batch], now=NOW)


@pytest.mark.parametrize("restore", ["stored_before_the_restart", "stored_ahead", None])
def test_a_state_rebuilt_from_recent_history_and_stay_facts_equals_the_batch_path(
    restore: str | None,
) -> None:
    """A scorer restarted hours into a ward replays the last 300 minutes of the stream
    into a fresh state, and takes the stays' first minute and first-hours sums from the
    store the first scorer filled (``stay_facts``): every vector after the restart is
    the batch path's.

    Also when that scorer had gone further than the offsets this one resumes from (it
    stored, then died before committing): its facts already hold minutes still to come
    here, which must not be added twice. The restart is then put 10 minutes before the
    end of a stay's first four hours. Without the facts, stays older than the replay are
    wrong in ``stay_minutes`` and the baseline features."""
    lateness = 45
    events, admissions = _simulated(seed=12, patients=30, hours=8)
    restart = int(len(events) * 0.75)
    before = OnlineFeatures(capacity=4, lateness_minutes=lateness)
    before.admit(admissions)
    if restore == "stored_ahead":
        _fold(before, events)
        facts = before.stay_facts()
        straddled = pd.Timestamp(int(facts["first_minute"].min()) * 60, unit="s", tz="UTC")
        restart = int(np.argmax(events["ts"] >= straddled + pd.Timedelta(minutes=230)))
    else:
        _fold(before, events.iloc[:restart])
        facts = before.stay_facts()
        assert before.stay_facts().empty  # each stay is handed out once
    assert len(facts) > 5

    start, since = _replay_start(events, restart, 300)  # scorer.warmup_minutes
    assert 0 <= start < restart
    after = OnlineFeatures(capacity=4, lateness_minutes=lateness)
    after.admit(admissions)
    _fold(after, events.iloc[start:restart])
    after.distrust(list(after.slots), since + lateness)
    if restore:  # the stays it holds (not: the discharged ones)
        assert 0 < after.restore_stays(facts) <= len(facts)

    ref = reference_features(events, admissions)
    done = _completion(events, ref)
    pending = done >= restart  # rows whose inputs complete after the restart
    bad: list[str] = []
    compared = 0
    for a in range(restart, len(events), 150):
        after.update(events.iloc[a : a + 150], now=NOW)
        ready = np.nonzero(pending & (done < a + 150))[0]
        pending[ready] = False
        rows = ref.iloc[ready]
        ready = ready[after.answerable(rows["patient_id"].tolist(), rows["ts"])]
        rows = ref.iloc[ready]
        if rows.empty:
            continue
        got = after.features_at(rows["patient_id"].tolist(), rows["ts"])
        x, y = rows[list(FEATURE_NAMES)].to_numpy(), got[list(FEATURE_NAMES)].to_numpy()
        ok = np.isclose(x, y, rtol=1e-9, atol=1e-9, equal_nan=True)
        bad += [FEATURE_NAMES[j] for j in np.nonzero(~ok.all(axis=0))[0]]
        compared += len(rows)
    assert compared > 500
    if restore:
        assert not bad
    else:
        assert "stay_minutes" in bad


def test_stays_are_handed_out_once_and_only_those_seen_to_begin() -> None:
    events, admissions = _simulated(seed=13, patients=20, hours=8)
    restart = int(len(events) * 0.75)
    before = OnlineFeatures(capacity=4)
    before.admit(admissions)
    _fold(before, events.iloc[:restart])
    facts = before.stay_facts()
    assert len(facts) > 5
    assert before.stay_facts().empty
    start, since = _replay_start(events, restart, 300)
    after = OnlineFeatures(capacity=4)
    _fold(after, events.iloc[start:restart])
    after.distrust(list(after.slots), since + 45)
    # What it may hand out: only stays it saw begin, none of those the replay cut.
    assert set(after.stay_facts()["patient_id"]).isdisjoint(set(facts["patient_id"]))


def test_only_patients_with_vital_signs_hold_state_and_keep_their_admission() -> None:
    """A scorer worker reads the whole ward's admissions: a patient gets a slot (the
    bulk of the state) with their first vital sign, and their admission facts then."""
    events, admissions = _simulated(seed=14, patients=12, hours=1)
    online = OnlineFeatures(capacity=2)
    online.admit(admissions)
    assert (online.patients, online.admissions) == (0, len(admissions))
    one = admissions["patient_id"].iloc[3]
    vec = online.update(events[events["patient_id"] == one], now=NOW)
    assert online.patients == 1
    row = admissions.set_index("patient_id").loc[one]
    assert (vec["age"] == row["age"]).all()
    assert (vec["female"] == float(row["sex"] == "F")).all()
    # An admission that comes after the vital signs still reaches the patient's state.
    late = admissions.iloc[[3]].assign(age=row["age"] + 1)
    online.admit(late)
    again = online.features_at([one], pd.Series([vec["as_of"].iloc[-1]]))
    assert again["age"].iloc[0] == row["age"] + 1


def test_the_state_grows_by_doubling_but_not_past_the_admitted_patients() -> None:
    events, admissions = _simulated(seed=15, patients=40, hours=0.5)
    admitted = OnlineFeatures(capacity=4)
    admitted.admit(admissions)
    _fold(admitted, events, batch=10)  # patients arrive a few at a time
    assert admitted.patients == len(admissions) == 40
    assert len(admitted.first) == 40  # 4, 8, 16, 32, then the 40 admitted: not 64
    unknown = OnlineFeatures(capacity=4)
    _fold(unknown, events, batch=10)  # no admissions: plain doubling
    assert len(unknown.first) > 40  # past the ward: nothing bounds it


# --------------------------------------------------------------------------- hostile input
MAX_MAGNITUDE = 1e9  # the service refuses a feature beyond this (serving.service)


def _events(rows: list[dict[str, Any]]) -> pd.DataFrame:
    raw = [orjson.dumps(r) for r in rows]
    table = BatchValidator(VitalsEvent).validate(raw).table
    return table.to_pandas().drop(columns="_index")


def test_a_first_event_whose_every_vital_is_impossible_gives_bounded_features() -> None:
    """Its stay length was ~4.6e18 minutes (the "no minute yet" sentinel subtracted):
    the service refused the whole micro-batch with 400 and scoring stopped."""
    base = {"schema_version": 1, "patient_id": "pt-z", "device_id": "dev-z",
            "consciousness": None, "on_oxygen": None}  # fmt: skip
    rows = [
        {**base, "event_id": str(uuid.uuid4()), "ts": "2026-05-31T23:00:00Z",
         "heart_rate": 999999.0, "spo2": -5.0, "resp_rate": 0.0, "temperature": 1e6,
         "systolic_bp": -1e6, "diastolic_bp": 1e6},
    ]  # fmt: skip
    vec = OnlineFeatures().update(_events(rows), now=NOW)
    values = vec[list(FEATURE_NAMES)].to_numpy(dtype=float)
    assert np.isnan(vec["stay_minutes"]).all()
    assert (np.isnan(values) | (np.abs(values) <= MAX_MAGNITUDE)).all()


_VITAL = st.one_of(
    st.none(),
    st.floats(-1e6, 1e6, allow_nan=False),
    st.sampled_from([0.0, -0.0, 1e6, -1e6, 1e-300, 37.0, 98.6, 250.0]),
)


@st.composite
def _hostile_ward(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Contract-valid events at the edges: extreme readings, far-apart and equal times,
    few patients sharing devices, resent ids."""
    n = draw(st.integers(1, 60))
    start = draw(st.sampled_from(["2026-05-31T20:00:00Z", "2000-01-01T00:00:00Z",
                                  "2026-06-01T00:04:59Z", "2026-06-01T00:30:00Z"]))  # fmt: skip
    t0 = pd.Timestamp(start)
    rows, ids = [], []
    for _ in range(n):
        resend = ids and draw(st.booleans()) and draw(st.booleans())
        eid = draw(st.sampled_from(ids)) if resend else str(uuid.uuid4())
        ids.append(eid)
        ts = t0 + pd.Timedelta(seconds=draw(st.integers(-3 * 86400, 86400 * 400)))
        rows.append({
            "event_id": eid, "schema_version": 1,
            "patient_id": f"pt-{draw(st.integers(0, 3))}", "device_id": "dev-1",
            "ts": ts.isoformat().replace("+00:00", "Z"),
            **{v: draw(_VITAL) for v in VITALS},
            "consciousness": draw(st.sampled_from([None, "A", "C", "V", "P", "U"])),
            "on_oxygen": draw(st.sampled_from([None, True, False])),
        })  # fmt: skip
    return rows


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ward=_hostile_ward(), split=st.integers(1, 60))
def test_no_contract_valid_events_give_a_feature_the_service_would_refuse(
    ward: list[dict[str, Any]], split: int
) -> None:
    state = OnlineFeatures()
    events = _events(ward)
    for a in range(0, len(events), split):
        vec = state.update(events.iloc[a : a + split], now=NOW)
        values = vec[list(FEATURE_NAMES)].to_numpy(dtype=float)
        big = ~np.isnan(values) & ~(np.abs(values) <= MAX_MAGNITUDE)
        assert not big.any(), vec.loc[big.any(axis=1), list(FEATURE_NAMES)].iloc[:1].T
