"""The fetch process reads exactly what an in-process consumer reads, and never outlives its use."""

from __future__ import annotations

import time

import psutil
import pytest

from stack.kafka import KafkaClient, PartitionBatch, TopicPartition
from stack.kafkafetch import FetchError, InlineFetcher, ProcessFetcher
from stack.localstack import endpoints
from stack.settings import Settings

pytestmark = pytest.mark.integration

Row = tuple[int, int, bytes | None, bytes | None, int]  # partition, offset, key, value, ts


@pytest.fixture(params=["kafka-python", "confluent"])
def client(request: pytest.FixtureRequest, stack_settings: Settings) -> KafkaClient:
    kafka = stack_settings.kafka.model_copy(update={"client": request.param})
    return KafkaClient(kafka, endpoints(stack_settings).bootstrap_servers)


def _produce(client: KafkaClient, topic: str, n: int) -> list[TopicPartition]:
    admin = client.admin()
    admin.ensure_topics({topic: 3})
    parts = admin.partitions(topic)
    admin.close()
    producer = client.producer()
    for i in range(n):
        producer.send(topic, f"value-{i}".encode(), key=f"k{i % 7}".encode())
    producer.flush()
    producer.close()
    return parts


def _rows(batches: list[PartitionBatch]) -> list[Row]:
    out: list[Row] = []
    for b in batches:
        assert b.offsets == sorted(b.offsets)
        assert len(b.offsets) == len(b.timestamps_ms) == len(b.keys) == len(b.values)
        out += zip(
            [b.partition] * len(b), b.offsets, b.keys, b.values, b.timestamps_ms, strict=True
        )
    return out


def _drain(fetcher: InlineFetcher | ProcessFetcher, expected: int) -> list[Row]:
    rows: list[Row] = []
    deadline = time.monotonic() + 60
    while len(rows) < expected and time.monotonic() < deadline:
        rows += _rows(fetcher.poll())
    return rows


def test_the_fetch_process_reads_what_a_consumer_reads(
    client: KafkaClient, stack_settings: Settings
) -> None:
    topic = stack_settings.kafka.topics.vitals
    parts = _produce(client, topic, 3000)
    everything = InlineFetcher(client, 500, 0.2)
    everything.start(dict.fromkeys(parts, 0))
    all_rows = _drain(everything, 3000)
    everything.close()
    assert sorted(r[3] or b"" for r in all_rows) == sorted(
        f"value-{i}".encode() for i in range(3000)
    )
    # Resume mid-partition, as the lander does from committed offsets.
    start = {parts[0]: 5, parts[1]: 0, parts[2]: 17}
    expected = sorted(r for r in all_rows if r[1] >= start[parts[r[0]]])
    got = {}
    for kind in (InlineFetcher, ProcessFetcher):
        fetcher = kind(client, 400, 0.2)
        fetcher.start(start)
        got[kind.__name__] = sorted(_drain(fetcher, len(expected)))
        if isinstance(fetcher, ProcessFetcher):
            assert fetcher.peak_rss_mb() > 0
        fetcher.close()
    assert got["InlineFetcher"] == expected
    assert got["ProcessFetcher"] == expected


@pytest.fixture
def running(client: KafkaClient, stack_settings: Settings) -> ProcessFetcher:
    """A fetch process reading a small topic from the start, its first poll taken."""
    parts = _produce(client, stack_settings.kafka.topics.vitals, 10)
    fetcher = ProcessFetcher(client, 100, 0.1)
    fetcher.start(dict.fromkeys(parts, 0))
    fetcher.poll()
    return fetcher


def test_a_fetch_process_that_dies_is_an_error_naming_its_exit(running: ProcessFetcher) -> None:
    fetcher = running
    fetcher._proc.kill()
    error = None
    for _ in range(100):  # frames already in flight are still delivered first
        try:
            fetcher.poll()
        except FetchError as exc:
            error = exc
            break
    assert error is not None
    assert "exited with code -9" in str(error)
    with pytest.raises(FetchError, match="exited with code -9"):
        fetcher.poll()  # and it stays failed
    fetcher.close()


def test_closing_stops_the_fetch_process(running: ProcessFetcher, client: KafkaClient) -> None:
    pid = running._proc.pid
    running.close()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    # Closing before starting (a lander failing during its own startup) stops it too.
    early = ProcessFetcher(client, 100, 0.1)
    early_pid = early._proc.pid
    early.close()
    assert (
        not psutil.pid_exists(early_pid)
        or psutil.Process(early_pid).status() == psutil.STATUS_ZOMBIE
    )


def test_an_error_in_the_fetch_process_reaches_the_caller_with_its_traceback(
    stack_settings: Settings,
) -> None:
    kafka = stack_settings.kafka.model_copy(update={"client": "kafka-python"})
    client = KafkaClient(kafka, endpoints(stack_settings).bootstrap_servers)
    parts = _produce(client, stack_settings.kafka.topics.vitals, 10)
    fetcher = ProcessFetcher(client, 0, 0.1)  # kafka-python refuses to poll for 0 records
    fetcher.start(dict.fromkeys(parts, 0))
    with pytest.raises(
        FetchError, match=r"failed: ValueError\('max_records must be positive'\)"
    ) as info:
        fetcher.poll()
    assert "Traceback (most recent call last)" in str(info.value)
    fetcher.close()
