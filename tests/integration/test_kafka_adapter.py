"""The adapter contract, against the real broker, for every client it supports."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from stack.kafka import Consumer, KafkaClient, TopicPartition
from stack.localstack import endpoints
from stack.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture(params=["kafka-python", "confluent"])
def client(request: pytest.FixtureRequest, stack_settings: Settings) -> KafkaClient:
    kafka = stack_settings.kafka.model_copy(update={"client": request.param})
    return KafkaClient(kafka, endpoints(stack_settings).bootstrap_servers)


def test_produce_poll_commit_resume(client: KafkaClient, stack_settings: Settings) -> None:
    topic = stack_settings.kafka.topics.vitals
    admin = client.admin()
    admin.ensure_topics({topic: 2})
    admin.ensure_topics({topic: 2})  # idempotent
    parts = admin.partitions(topic)
    admin.close()
    assert parts == [TopicPartition(topic, 0), TopicPartition(topic, 1)]

    producer = client.producer()
    for i in range(200):
        producer.send(topic, f"v{i}".encode(), key=f"k{i % 5}".encode(), headers=[("h", b"1")])
    producer.flush()
    producer.close()

    group = f"g-{client.settings.client}"
    consumer = client.consumer(group)
    consumer.assign(parts)
    marks = consumer.watermarks(parts)
    ends = {tp: high for tp, (_low, high) in marks.items()}
    # Tansu reports the high watermark as the last *batch's* base offset + 1, so the end
    # offsets may understate what is there; Apache Kafka reports exactly 200.
    assert 2 <= sum(ends.values()) <= 200
    assert {tp: low for tp, (low, _high) in marks.items()} == dict.fromkeys(parts, 0)
    assert consumer.committed(parts) == dict.fromkeys(parts, None)
    got = []
    for _ in range(40):
        got += consumer.poll_batch(500, 0.5)
        if len(got) >= 200:
            break
    assert sorted(r.value for r in got) == sorted(f"v{i}".encode() for i in range(200))
    last = {tp: max(r.offset for r in got if r.partition == tp.partition) for tp in parts}
    assert sum(last.values()) + len(parts) == 200
    assert all(r.headers == (("h", b"1"),) for r in got)
    # Per key, order is kept within its partition.
    k0 = [int(r.value[1:]) for r in got if r.key == b"k0"]
    assert k0 == sorted(k0)
    consumer.commit({parts[0]: 10})
    consumer.close()

    again = client.consumer(group)
    again.assign(parts)
    assert again.committed(parts) == {parts[0]: 10, parts[1]: None}
    again.seek(parts[0], 10)
    rest = []
    for _ in range(40):
        rest += [r for r in again.poll_batch(500, 0.5) if r.partition == parts[0].partition]
        if len(rest) >= last[parts[0]] + 1 - 10:
            break
    assert min(r.offset for r in rest) == 10
    again.close()


def test_group_members_share_partitions_and_settle(
    client: KafkaClient, stack_settings: Settings
) -> None:
    """What a group lander relies on: two members of a group end up holding disjoint
    halves of the partitions, and say they are no longer rebalancing once they do."""
    import time

    topic = stack_settings.kafka.topics.vitals
    admin = client.admin()
    admin.ensure_topics({topic: 4})
    admin.close()
    group = f"share-{client.settings.client}"
    first = client.consumer(group)
    first.subscribe([topic])

    def settle(*members: Consumer, until: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 60
        while not until():
            assert time.monotonic() < deadline, [(m.rebalancing(), m.assignment()) for m in members]
            for m in members:
                m.poll_columns(1, 0.2)

    settle(first, until=lambda: len(first.assignment()) == 4 and not first.rebalancing())
    second = client.consumer(group)
    second.subscribe([topic])
    settle(first, second, until=lambda: not first.rebalancing() and not second.rebalancing()
           and len(first.assignment()) == len(second.assignment()) == 2)  # fmt: skip
    assert not first.assignment() & second.assignment()
    first.close()
    second.close()
