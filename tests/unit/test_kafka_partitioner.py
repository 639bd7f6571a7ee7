"""The kafka-python producer's partitioner: the default's partitions, hashed once per key."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from kafka.partitioner import DefaultPartitioner

from stack import kafka as adapter
from stack.kafka import _keyed_partitioner


class _Cluster:
    """What a partitioner asks of kafka-python's cluster metadata."""

    def __init__(self, partitions: set[int]) -> None:
        self.partitions = partitions

    def topics(self) -> set[str]:
        return {"t"}

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return self.partitions if topic == "t" else None

    def available_partitions_for_topic(self, topic: str) -> set[int]:
        return self.partitions


@given(
    keys=st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=50),
    partitions=st.sets(st.integers(0, 40), min_size=1, max_size=12),
)
@settings(max_examples=200, deadline=None)
def test_keyed_partitions_are_the_default_partitioners(
    keys: list[bytes], partitions: set[int]
) -> None:
    cluster = _Cluster(partitions)
    ours, default = _keyed_partitioner(), DefaultPartitioner()
    for key in keys * 2:  # the second time from the remembered hash
        assert ours.partition("t", key, key, b"v", b"v", cluster) == default.partition(
            "t", key, key, b"v", b"v", cluster
        )


def test_unkeyed_records_go_to_an_available_partition_and_the_memory_is_bounded(
    monkeypatch: Any,
) -> None:
    cluster = _Cluster({3, 5, 8})
    ours = _keyed_partitioner()
    assert {ours.partition("t", None, None, b"v", b"v", cluster) for _ in range(200)} == {3, 5, 8}
    monkeypatch.setattr(adapter, "KEY_HASHES_KEPT", 10)
    for i in range(25):
        ours.partition("t", None, f"k{i}".encode(), b"v", b"v", cluster)
    assert len(ours._hashes) <= 10
