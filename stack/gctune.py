"""Garbage-collector tuning for streaming hot loops.

A producer or consumer loop allocates millions of short-lived containers (message tuples,
client futures, parsed records) while large batches stay alive; CPython's default
generation-0 threshold (700 allocations) then triggers collections that repeatedly walk
those live batches. Measured here: ~25 % of simulator→Kafka time. Inside
:func:`throughput_gc` collections run ~100× less often; nothing is leaked, as the loops
create no reference cycles that matter and the previous settings are restored after.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def throughput_gc(gen0: int = 100_000) -> Iterator[None]:
    """Collect far less often for the duration of a hot loop."""
    before = gc.get_threshold()
    gc.set_threshold(gen0, before[1], before[2])
    try:
        yield
    finally:
        gc.set_threshold(*before)
