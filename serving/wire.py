"""Feature rows on the wire as an Arrow IPC stream: the scorer's transport to the service.

JSON spends most of a scoring call on text: for 1,000 rows of the 125 features the
server parsed and validated ~125,000 numbers one by one before the model saw any (see
``bench/results/serving.json``). An Arrow IPC stream (``application/vnd.apache.arrow.
stream``) carries the same columns as their float64 bytes, read without a per-value step.

The request is as strict as the JSON ``/predict_columns``: every feature of the declared
feature set, no other column, 1 to ``max_rows`` rows, numeric columns, and finite values
of magnitude at most ``max_magnitude``; null or NaN means "not observed". Anything else is
a :class:`WireError` naming the column (and the row) and why, which the service answers
with a 400 (an unparseable body included: never a 500).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pyarrow as pa

MEDIA_TYPE = "application/vnd.apache.arrow.stream"


class WireError(ValueError):
    """The body is not a valid feature stream; the message says what and where."""


def encode(values: npt.NDArray[np.float64], names: Sequence[str]) -> bytes:
    """A rows × ``names`` matrix as one Arrow record batch (float64; NaN = not observed)."""
    if values.ndim != 2 or values.shape[1] != len(names):
        raise ValueError(f"expected a rows x {len(names)} matrix, got shape {values.shape}")
    columns = np.asfortranarray(values, dtype=np.float64)  # each column contiguous: no copy
    batch = pa.RecordBatch.from_arrays(
        [pa.array(columns[:, j]) for j in range(len(names))], names=list(names)
    )
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return bytes(sink.getvalue())


def decode(
    body: bytes, names: Sequence[str], *, max_rows: int, max_magnitude: float
) -> npt.NDArray[np.float64]:
    """A rows × ``names`` float matrix (NaN = not observed) from an Arrow IPC stream.

    Raises:
        WireError: not an Arrow stream; a feature missing or an unknown column; no rows
            or more than ``max_rows``; a non-numeric column; an infinite value or one
            beyond ``max_magnitude``.
    """
    try:
        table = pa.ipc.open_stream(pa.py_buffer(body)).read_all()
        table.validate(full=True)  # a damaged stream's offsets and lengths are checked
        got = table.column_names  # names are UTF-8 in a valid stream
    except (pa.ArrowException, OSError, ValueError) as exc:  # UnicodeDecodeError included
        raise WireError(f"the body is not an Arrow IPC stream: {exc}") from exc
    present = set(got)
    if len(present) != len(got):
        twice = next(n for n in got if got.count(n) > 1)
        raise WireError(f"column {twice!r} appears more than once")
    missing = [n for n in names if n not in present]
    if missing:
        raise WireError(f"feature {missing[0]!r} is missing ({len(missing)} missing in all)")
    unknown = sorted(present.difference(names))
    if unknown:
        raise WireError(f"column {unknown[0]!r} is not a feature of this feature set")
    rows = table.num_rows
    if not 1 <= rows <= max_rows:
        raise WireError(f"{rows} rows: send 1 to {max_rows} rows per request")
    out = np.empty((rows, len(names)), dtype=np.float64)
    for j, name in enumerate(names):
        col = table.column(name)
        if not (pa.types.is_floating(col.type) or pa.types.is_integer(col.type)):
            raise WireError(f"column {name!r} is {col.type}, not a number")
        # Unsafe: an integer beyond 2**53 rounds (and is then refused for its size below)
        # instead of failing the cast, which was a 500.
        out[:, j] = col.cast(pa.float64(), safe=False).to_numpy(zero_copy_only=False)
    bad = np.abs(out) > max_magnitude  # NaN compares false: not observed is fine
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise WireError(
            f"column {names[j]!r}, row {i}: {float(out[i, j])!r} is not a finite number of "
            f"magnitude at most {max_magnitude:g}"
        )
    return out
