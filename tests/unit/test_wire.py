"""The Arrow transport of feature rows (``serving.wire``): exact round trip, strict refusals."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from serving import wire

NAMES = ["heart_rate_last", "spo2_min", "news2"]


def _decode(body: bytes, max_rows: int = 100) -> np.ndarray:
    return wire.decode(body, NAMES, max_rows=max_rows, max_magnitude=1e9)


def _stream(columns: dict[str, pa.Array]) -> bytes:
    batch = pa.RecordBatch.from_arrays(list(columns.values()), names=list(columns))
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as w:
        w.write_batch(batch)
    return bytes(sink.getvalue())


@given(
    st.lists(
        st.lists(st.none() | st.floats(-1e9, 1e9, allow_nan=False), min_size=3, max_size=3),
        min_size=1,
        max_size=40,
    )
)
def test_rows_round_trip_exactly_with_nan_for_not_observed(rows: list[list[float | None]]) -> None:
    x = pd.DataFrame(rows, columns=NAMES, dtype=float)
    got = _decode(wire.encode(x.to_numpy(), NAMES))
    np.testing.assert_array_equal(got, x.to_numpy())  # NaN where NaN, bits elsewhere


def test_columns_are_read_by_name_whatever_their_order_and_nulls_are_not_observed() -> None:
    body = _stream({
        "news2": pa.array([3, 5], type=pa.int8()),
        "heart_rate_last": pa.array([80.5, None]),
        "spo2_min": pa.array([np.nan, 91.0], type=pa.float32()),
    })  # fmt: skip
    got = _decode(body)
    np.testing.assert_array_equal(got, [[80.5, np.nan, 3.0], [np.nan, 91.0, 5.0]])


@pytest.mark.parametrize(
    ("columns", "says"),
    [
        (
            {"heart_rate_last": pa.array([1.0]), "spo2_min": pa.array([1.0])},
            "feature 'news2' is missing",
        ),
        (
            {**dict.fromkeys(NAMES, pa.array([1.0])), "hr_typo": pa.array([1.0])},
            "column 'hr_typo' is not a feature",
        ),
        (
            {**dict.fromkeys(NAMES, pa.array([1.0])), "news2": pa.array(["high"])},
            "column 'news2' is string, not a number",
        ),
        (
            {**dict.fromkeys(NAMES, pa.array([1.0, 2.0])), "spo2_min": pa.array([1.0, np.inf])},
            "column 'spo2_min', row 1: inf",
        ),
        (
            {**dict.fromkeys(NAMES, pa.array([1.0])), "news2": pa.array([-1e308])},
            "column 'news2', row 0",
        ),
        (dict.fromkeys(NAMES, pa.array([], type=pa.float64())), "0 rows"),
        (dict.fromkeys(NAMES, pa.array(np.zeros(101))), "101 rows: send 1 to 100"),
    ],
    ids=["missing", "unknown", "text", "infinite", "huge", "empty", "too many"],
)
def test_a_bad_stream_is_refused_naming_the_column_and_why(
    columns: dict[str, pa.Array], says: str
) -> None:
    with pytest.raises(wire.WireError, match=says.replace("(", r"\(")):
        _decode(_stream(columns))


def test_a_repeated_column_is_refused() -> None:
    arr = pa.array([1.0])
    batch = pa.RecordBatch.from_arrays([arr, arr, arr, arr], names=[*NAMES, "news2"])
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as w:
        w.write_batch(batch)
    with pytest.raises(wire.WireError, match="'news2' appears more than once"):
        _decode(bytes(sink.getvalue()))


@pytest.mark.parametrize("body", [b"", b"{}", b'{"columns": {}}', b"\xff" * 64])
def test_a_body_that_is_not_arrow_is_a_wire_error(body: bytes) -> None:
    with pytest.raises(wire.WireError, match="not an Arrow IPC stream"):
        _decode(body)


def test_encode_refuses_a_matrix_of_another_width() -> None:
    with pytest.raises(ValueError, match="rows x 3 matrix"):
        wire.encode(np.zeros((2, 4)), NAMES)


def test_a_truncated_stream_is_a_wire_error() -> None:
    body = wire.encode(np.array([[1.0, 2.0, 3.0]] * 10), NAMES)
    with pytest.raises(wire.WireError, match="not an Arrow IPC stream"):
        _decode(body[: len(body) // 2])


def test_any_one_damaged_byte_gives_values_or_a_wire_error_never_another_exception() -> None:
    """The fuzz test against the server found a name byte that failed UTF-8 decoding."""
    good = wire.encode(np.array([[0.5, np.nan, 3.0]] * 2), NAMES)
    outcomes = set()
    for i in range(len(good)):
        body = bytearray(good)
        body[i] ^= 0xFF
        try:
            _decode(bytes(body))
            outcomes.add("values")
        except wire.WireError:
            outcomes.add("refused")
    assert outcomes == {"values", "refused"}


@given(
    st.sampled_from([pa.int64(), pa.uint64(), pa.int32(), pa.int8(), pa.uint8()]),
    st.integers(-(2**64), 2**64),
)
def test_any_integer_column_gives_values_or_a_wire_error(kind: pa.DataType, value: int) -> None:
    """An int64 column holding 2**62 failed Arrow's safe cast to float64: a 500."""
    try:
        arr = pa.array([value], type=kind)
    except (OverflowError, pa.ArrowInvalid):
        return  # not representable in that type: no such stream can be sent
    body = _stream({**dict.fromkeys(NAMES, pa.array([1.0])), "news2": arr})
    if abs(value) > 1e9:
        with pytest.raises(wire.WireError, match="column 'news2', row 0"):
            _decode(body)
    else:
        assert _decode(body)[0, 2] == float(value)
