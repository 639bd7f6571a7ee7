"""Where a history replay starts (``serving.replay``): pure parts, no broker."""

from __future__ import annotations

import uuid

import numpy as np
import orjson
from hypothesis import given
from hypothesis import strategies as st

from serving.replay import event_minutes, first_offset_since
from stack.batchvalidate import BatchValidator
from stack.contracts import VitalsEvent


def _bisect_over(minutes: list[float | None], lo: int = 0) -> tuple[list[int], object]:
    probed: list[int] = []

    def minute_at(offset: int) -> float | None:
        probed.append(offset)
        return minutes[offset - lo]

    return probed, minute_at


@given(
    st.lists(st.integers(0, 10_000), min_size=0, max_size=3000).map(sorted),
    st.integers(-100, 10_100),
    st.integers(0, 10**9),
)
def test_in_order_it_finds_the_first_offset_at_or_after_the_time(
    times: list[int], since: int, lo: int
) -> None:
    probed, minute_at = _bisect_over([float(t) for t in times], lo)
    got = first_offset_since(minute_at, lo, lo + len(times), since)  # type: ignore[arg-type]
    want = lo + next((i for i, t in enumerate(times) if t >= since), len(times))
    assert got == want
    assert len(probed) <= max(1, int(np.ceil(np.log2(len(times) + 1))))  # bisection


def test_all_older_means_nothing_to_replay_and_all_newer_means_everything() -> None:
    _p, minute_at = _bisect_over([1.0, 2.0, 3.0])
    assert first_offset_since(minute_at, 0, 3, 10.0) == 3  # type: ignore[arg-type]
    assert first_offset_since(minute_at, 0, 3, 0.0) == 0  # type: ignore[arg-type]
    assert first_offset_since(minute_at, 5, 5, 0.0) == 5  # type: ignore[arg-type]


def test_an_unreadable_offset_counts_as_recent_so_more_is_replayed_never_less() -> None:
    # Offsets 4..6 hold nothing valid: the start moves before them, not past them.
    minutes = [0.0, 10.0, 20.0, 30.0, None, None, None, 70.0, 80.0]
    _p, minute_at = _bisect_over(minutes)
    assert first_offset_since(minute_at, 0, len(minutes), 35.0) == 4  # type: ignore[arg-type]


def _event(ts: str, **over: object) -> bytes:
    e = {"event_id": str(uuid.uuid4()), "schema_version": 1, "patient_id": "p",
         "device_id": "d", "ts": ts, "heart_rate": 80.0, "systolic_bp": 120.0,
         "diastolic_bp": 75.0, "spo2": 97.0, "resp_rate": 16.0, "temperature": 37.0,
         "consciousness": "A", "on_oxygen": False}  # fmt: skip
    return orjson.dumps({**e, **over})


def test_event_minutes_are_the_valid_events_epoch_minutes() -> None:
    v = BatchValidator(VitalsEvent)
    values = [
        _event("2026-01-01T00:00:30+00:00"),
        b"not json",
        _event("2026-01-01T01:00:59+01:00"),  # the same minute, another offset
        _event("2026-01-01T00:02:00Z", spo2="high"),  # invalid: skipped
        None,
    ]
    got = event_minutes(v, values)
    base = np.datetime64("2026-01-01T00:00", "m").astype(np.int64)
    assert got.tolist() == [base, base]
    assert event_minutes(v, []).tolist() == []
