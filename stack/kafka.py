"""One small Kafka adapter, so that stages never import a client library.

``kafka-python`` is the default client (the design card's choice); ``confluent-kafka``
(librdkafka, about 20x faster here) is an optional extra selected with
``kafka.client: confluent``. Both implement the same three roles:

- :class:`Producer` — ``send(topic, key, value, headers)``, ``flush()``, ``close()``;
- :class:`Consumer` — manual ``assign`` (optionally at given offsets)/``subscribe``,
  ``poll_batch`` (records) or ``poll_columns`` (one :class:`PartitionBatch` per partition:
  lists, not per-message objects), ``commit`` of explicit next offsets, ``committed``,
  ``watermarks`` (low, high), ``seek``;
- :class:`Admin` — ``ensure_topics`` and ``partitions``.

Offsets are always explicit: stages commit exactly what they have made durable.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from stack.kafkasecurity import kafka_python_options, librdkafka_options

if TYPE_CHECKING:  # annotations only: the fetch process starts without pydantic
    from stack.settings import KafkaSettings

Headers = Sequence[tuple[str, bytes]]


class _CancelledRefreshIsDebug(logging.Filter):
    """kafka-python logs an ERROR, "Metadata refresh: failed Cancelled", when a client
    is closed with a metadata refresh in flight: our own close cancelled it, nothing
    failed (the demo printed it as an error). That record is logged at DEBUG instead;
    every other failure keeps its level."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        cancelled = bool(args) and type(args[0]).__name__ == "Cancelled"
        if record.msg == "Metadata refresh: failed %s" and cancelled:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            # As a DEBUG record would be: kept only where DEBUG is logged.
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


logging.getLogger("kafka.cluster").addFilter(_CancelledRefreshIsDebug())


class KafkaUnavailableError(ConnectionError):
    """The broker could not be reached; the message names the bootstrap servers."""


class KafkaDeliveryError(ConnectionError):
    """Messages sent were not acknowledged (the broker away or refusing): send again."""


class CommitFailedError(RuntimeError):
    """The group rebalanced under this consumer before it committed: the partitions'
    offsets stay where they were, and their (new) owner re-delivers what was not
    committed. A consumer that stores idempotently logs it and goes on."""


def rebalanced(exc: BaseException) -> bool:
    """Whether a client's commit error means "the group moved on", for either client."""
    from kafka import errors as kp

    if isinstance(exc, kp.CommitFailedError | kp.RebalanceInProgressError
                  | kp.IllegalGenerationError | kp.UnknownMemberIdError
                  | kp.FencedInstanceIdError):  # fmt: skip
        return True
    try:
        from confluent_kafka import KafkaError, KafkaException
    except ImportError:  # confluent-kafka is optional
        return False
    if not isinstance(exc, KafkaException) or not exc.args:
        return False
    err = exc.args[0]
    codes = {KafkaError.REBALANCE_IN_PROGRESS, KafkaError.ILLEGAL_GENERATION,
             KafkaError.UNKNOWN_MEMBER_ID, KafkaError._ASSIGNMENT_LOST,
             KafkaError.FENCED_INSTANCE_ID}  # fmt: skip
    return isinstance(err, KafkaError) and err.code() in codes


def is_broker_outage(exc: BaseException) -> bool:
    """Whether an error means "the broker is away or slow" (retry later), for either
    client: a failed bootstrap, a timeout, a lost connection, a retriable broker error.
    A rebalance (:func:`rebalanced`) is not an outage: the group moved on."""
    if isinstance(exc, KafkaUnavailableError | KafkaDeliveryError):
        return True
    if rebalanced(exc):
        return False
    from kafka import errors as kp

    if isinstance(exc, kp.KafkaError):
        return True
    try:
        from confluent_kafka import KafkaException
    except ImportError:
        return False
    return isinstance(exc, KafkaException)


@dataclass(frozen=True, slots=True)
class TopicPartition:
    topic: str
    partition: int


class Record(NamedTuple):
    """A consumed message, client-independent (a tuple: cheap to build per message)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(slots=True)
class PartitionBatch:
    """Consecutive records of one partition as columns (cheap to build, pickle and slice).

    ``offsets`` ascend; the lists are parallel.
    """

    topic: str
    partition: int
    offsets: list[int]
    timestamps_ms: list[int]
    keys: list[bytes | None]
    values: list[bytes | None]

    def __len__(self) -> int:
        return len(self.offsets)


class Producer(Protocol):
    def send(
        self,
        topic: str,
        value: bytes,
        key: bytes | None = None,
        headers: Headers = (),
        timestamp_ms: int | None = None,
    ) -> None: ...
    def flush(self, timeout_s: float = 60.0) -> None: ...
    def close(self) -> None: ...


class Consumer(Protocol):
    def assign(
        self,
        partitions: Sequence[TopicPartition],
        offsets: Mapping[TopicPartition, int] | None = None,
    ) -> None: ...
    def subscribe(self, topics: Sequence[str]) -> None: ...
    def assignment(self) -> set[TopicPartition]: ...
    def rebalancing(self) -> bool:
        """Whether the group has revoked this member's partitions and not yet given it
        new ones (eager rebalancing: until then, :meth:`assignment` may still list the
        old ones, and a commit is refused)."""
        ...

    def poll_batch(self, max_records: int, timeout_s: float) -> list[Record]: ...
    def poll_columns(self, max_records: int, timeout_s: float) -> list[PartitionBatch]: ...
    def commit(self, offsets: Mapping[TopicPartition, int]) -> None: ...
    def committed(
        self, partitions: Sequence[TopicPartition]
    ) -> dict[TopicPartition, int | None]: ...
    def watermarks(
        self, partitions: Sequence[TopicPartition]
    ) -> dict[TopicPartition, tuple[int, int]]: ...
    def seek(self, partition: TopicPartition, offset: int) -> None: ...
    def position(self, partition: TopicPartition) -> int: ...
    def pause(self, partitions: Sequence[TopicPartition]) -> None: ...
    def resume(self, partitions: Sequence[TopicPartition]) -> None: ...
    def close(self) -> None: ...


COMMIT_TIMEOUT_S = 30.0  # a commit the broker does not answer: an outage, retried by callers
CLOSE_TIMEOUT_S = 10.0  # what closing a producer waits for unsent messages at most


class Admin(Protocol):
    def ensure_topics(self, topics: Mapping[str, int]) -> None: ...
    def partitions(self, topic: str) -> list[TopicPartition]: ...
    def close(self) -> None: ...


# ============================================================================ kafka-python
KEY_HASHES_KEPT = 100_000  # distinct keys (patients) whose hash the partitioner remembers


def _keyed_partitioner() -> Any:
    """kafka-python's default partitioner, remembering each key's murmur2 hash.

    The same partition for every key as the default (and as the Java client): the hash
    of the key, masked positive, modulo the topic's partitions in order. kafka-python
    hashes in pure Python on every send — about a quarter of a keyed send's time here —
    while a ward's keys (patients) repeat on every batch.
    """
    from kafka.partitioner import DefaultPartitioner, murmur2

    class KeyedPartitioner(DefaultPartitioner):  # type: ignore[misc]
        def __init__(self) -> None:
            self._hashes: dict[bytes, int] = {}

        def partition(
            self, topic: str, key: Any, serialized_key: bytes | None, value: Any,
            serialized_value: Any, cluster: Any,
        ) -> int:  # fmt: skip
            if serialized_key is None:
                return int(super().partition(topic, key, None, value, serialized_value, cluster))
            parts = cluster.partitions_for_topic(topic)
            if parts is None:
                raise ValueError(f"Topic {topic} not found in ClusterMetadata")
            h = self._hashes.get(serialized_key)
            if h is None:
                if len(self._hashes) >= KEY_HASHES_KEPT:
                    self._hashes.clear()
                h = self._hashes[serialized_key] = murmur2(serialized_key) & 0x7FFFFFFF
            ordered = sorted(parts)
            return int(ordered[h % len(ordered)])

    return KeyedPartitioner()


class _KpProducer:
    def __init__(self, settings: KafkaSettings, bootstrap: str) -> None:
        from kafka import KafkaProducer
        from kafka.errors import KafkaTimeoutError

        p = settings.producer
        try:
            self._p = KafkaProducer(
                bootstrap_servers=bootstrap,
                **kafka_python_options(settings.security),
                acks="all",
                linger_ms=p.linger_ms,
                batch_size=p.batch_size_bytes,
                compression_type=None if p.compression == "none" else p.compression,
                max_request_size=8 * 1024 * 1024,
                partitioner=_keyed_partitioner(),
            )
        except KafkaTimeoutError as exc:
            raise KafkaUnavailableError(f"no Kafka broker answered at {bootstrap}") from exc
        self._errors: list[BaseException] = []

    def _on_error(self, exc: BaseException) -> None:
        self._errors.append(exc)

    def send(
        self,
        topic: str,
        value: bytes,
        key: bytes | None = None,
        headers: Headers = (),
        timestamp_ms: int | None = None,
    ) -> None:
        fut = self._p.send(
            topic, value=value, key=key, headers=list(headers) or None, timestamp_ms=timestamp_ms
        )
        fut.add_errback(self._on_error)

    def flush(self, timeout_s: float = 60.0) -> None:
        self._p.flush(timeout=timeout_s)
        if self._errors:
            err, self._errors = self._errors[0], []
            raise KafkaDeliveryError(f"Kafka delivery failed: {err!r}") from err

    def close(self) -> None:
        # Bounded: a producer closed during a broker outage must not hang its process.
        self._p.close(timeout=CLOSE_TIMEOUT_S)


class _KpConsumer:
    def __init__(self, settings: KafkaSettings, bootstrap: str, group_id: str | None) -> None:
        from kafka import KafkaConsumer
        from kafka.errors import KafkaTimeoutError

        c = settings.consumer
        try:
            self._c = KafkaConsumer(
                bootstrap_servers=bootstrap,
                **kafka_python_options(settings.security),
                group_id=group_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                session_timeout_ms=c.session_timeout_ms,
                heartbeat_interval_ms=c.heartbeat_interval_ms,
                max_poll_interval_ms=c.max_poll_interval_ms,
                fetch_max_bytes=c.fetch_max_bytes,
                max_partition_fetch_bytes=c.max_partition_fetch_bytes,
                max_poll_records=c.max_poll_records,
            )
        except KafkaTimeoutError as exc:
            raise KafkaUnavailableError(f"no Kafka broker answered at {bootstrap}") from exc
        self._group = {"rebalancing": False}  # set by the rebalance listener

    @staticmethod
    def _tp(tp: TopicPartition) -> Any:
        from kafka import TopicPartition as KafkaTP

        return KafkaTP(tp.topic, tp.partition)

    def assign(
        self,
        partitions: Sequence[TopicPartition],
        offsets: Mapping[TopicPartition, int] | None = None,
    ) -> None:
        self._c.assign([self._tp(tp) for tp in partitions])
        for tp, off in (offsets or {}).items():
            self._c.seek(self._tp(tp), off)

    def subscribe(self, topics: Sequence[str]) -> None:
        from kafka import ConsumerRebalanceListener

        state = self._group

        class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
            def on_partitions_revoked(self, revoked: Any) -> None:
                state["rebalancing"] = True

            def on_partitions_assigned(self, assigned: Any) -> None:
                state["rebalancing"] = False

        self._c.subscribe(list(topics), listener=Listener())

    def rebalancing(self) -> bool:
        return self._group["rebalancing"]

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition(tp.topic, tp.partition) for tp in self._c.assignment()}

    def poll_batch(self, max_records: int, timeout_s: float) -> list[Record]:
        polled = self._c.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        out: list[Record] = []
        for recs in polled.values():
            out.extend(
                Record(
                    r.topic,
                    r.partition,
                    r.offset,
                    r.key,
                    r.value,
                    r.timestamp,
                    tuple(map(tuple, r.headers)) if r.headers else (),
                )
                for r in recs
            )
        return out

    def poll_columns(self, max_records: int, timeout_s: float) -> list[PartitionBatch]:
        polled = self._c.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        return [
            PartitionBatch(
                tp.topic,
                tp.partition,
                [r.offset for r in recs],
                [r.timestamp for r in recs],
                [r.key for r in recs],
                [r.value for r in recs],
            )
            for tp, recs in polled.items()
            if recs
        ]

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        from kafka.structs import OffsetAndMetadata

        if offsets:
            try:
                self._c.commit(
                    {self._tp(tp): OffsetAndMetadata(off, "", -1) for tp, off in offsets.items()},
                    timeout_ms=int(COMMIT_TIMEOUT_S * 1000),
                )
            except Exception as exc:
                if rebalanced(exc):
                    raise CommitFailedError(f"offsets not committed: {exc!r}") from exc
                raise

    def pause(self, partitions: Sequence[TopicPartition]) -> None:
        self._c.pause(*[self._tp(tp) for tp in partitions])

    def resume(self, partitions: Sequence[TopicPartition]) -> None:
        self._c.resume(*[self._tp(tp) for tp in partitions])

    def committed(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int | None]:
        out: dict[TopicPartition, int | None] = {}
        for tp in partitions:
            off = self._c.committed(self._tp(tp))
            out[tp] = None if off is None else int(off)
        return out

    def watermarks(
        self, partitions: Sequence[TopicPartition]
    ) -> dict[TopicPartition, tuple[int, int]]:
        ktps = [self._tp(tp) for tp in partitions]
        low = self._c.beginning_offsets(ktps)
        high = self._c.end_offsets(ktps)
        return {tp: (int(low[k]), int(high[k])) for tp, k in zip(partitions, ktps, strict=True)}

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self._c.seek(self._tp(partition), offset)

    def position(self, partition: TopicPartition) -> int:
        return int(self._c.position(self._tp(partition)))

    def close(self) -> None:
        self._c.close(autocommit=False)


class _KpAdmin:
    def __init__(self, settings: KafkaSettings, bootstrap: str) -> None:
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaTimeoutError

        self._settings = settings
        try:
            self._a = KafkaAdminClient(
                bootstrap_servers=bootstrap,
                **kafka_python_options(settings.security),
                request_timeout_ms=15000,
            )
        except KafkaTimeoutError as exc:
            raise KafkaUnavailableError(f"no Kafka broker answered at {bootstrap}") from exc

    def ensure_topics(self, topics: Mapping[str, int]) -> None:
        from kafka.admin import NewTopic

        existing = set(self._a.list_topics())
        rf = self._settings.replication_factor
        configs = dict(self._settings.topic_configs)
        missing = [
            NewTopic(name, n, rf, topic_configs=configs)
            for name, n in topics.items()
            if name not in existing
        ]
        if missing:
            from kafka.errors import TopicAlreadyExistsError

            # Created concurrently by another process: that is the goal.
            with contextlib.suppress(TopicAlreadyExistsError):
                self._a.create_topics(missing)

    def partitions(self, topic: str) -> list[TopicPartition]:
        meta = self._a.describe_topics([topic])
        parts = sorted(p["partition_index"] for p in meta[0]["partitions"])
        return [TopicPartition(topic, p) for p in parts]

    def close(self) -> None:
        self._a.close()


# ============================================================================ confluent
class _CkProducer:
    def __init__(self, settings: KafkaSettings, bootstrap: str) -> None:
        from confluent_kafka import Producer as ConfluentProducer

        p = settings.producer
        self._p = ConfluentProducer(
            {
                "bootstrap.servers": bootstrap,
                **librdkafka_options(settings.security),
                "acks": "all",
                "enable.idempotence": True,
                "linger.ms": p.linger_ms,
                "batch.size": p.batch_size_bytes,
                "compression.type": p.compression,
                "queue.buffering.max.messages": 1_000_000,
                "message.max.bytes": 8 * 1024 * 1024,
            }
        )
        self._errors: list[Any] = []

    def _cb(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self._errors.append(err)

    def send(
        self,
        topic: str,
        value: bytes,
        key: bytes | None = None,
        headers: Headers = (),
        timestamp_ms: int | None = None,
    ) -> None:
        extra: dict[str, Any] = {"timestamp": timestamp_ms} if timestamp_ms is not None else {}
        while True:
            try:
                self._p.produce(
                    topic, value=value, key=key, headers=list(headers) or None,
                    on_delivery=self._cb, **extra,
                )  # fmt: skip
                break
            except BufferError:
                self._p.poll(0.05)  # local queue full: serve delivery reports, then retry
        self._p.poll(0)

    def flush(self, timeout_s: float = 60.0) -> None:
        left = self._p.flush(timeout_s)
        if left:
            raise KafkaDeliveryError(f"Kafka delivery incomplete: {left} messages still queued")
        if self._errors:
            err, self._errors = self._errors[0], []
            raise KafkaDeliveryError(f"Kafka delivery failed: {err}")

    def close(self) -> None:
        try:
            self.flush(CLOSE_TIMEOUT_S)
        except KafkaDeliveryError as exc:  # closing during an outage: logged, not raised
            logging.getLogger("vigil.kafka").warning("producer closed with %s", exc)


def _consume_error(err: Any) -> None:
    """A consume error from librdkafka: fatal ones raise (the client is unusable); the
    rest (a broker gone for a while, a partition moving) are logged, and the client
    recovers by itself, as kafka-python's does silently."""
    from confluent_kafka import KafkaException

    if err.fatal():
        raise KafkaException(err)
    logging.getLogger("vigil.kafka").warning("Kafka consume error (retried): %s", err)


class _CkConsumer:
    def __init__(self, settings: KafkaSettings, bootstrap: str, group_id: str | None) -> None:
        from confluent_kafka import Consumer as ConfluentConsumer

        c = settings.consumer
        self._c = ConfluentConsumer(
            {
                "bootstrap.servers": bootstrap,
                **librdkafka_options(settings.security),
                # librdkafka needs a group id even for manual assignment; it is only used
                # for offset commits then.
                "group.id": group_id or "vigil-anonymous",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": c.session_timeout_ms,
                "heartbeat.interval.ms": c.heartbeat_interval_ms,
                "max.poll.interval.ms": c.max_poll_interval_ms,
                "fetch.max.bytes": c.fetch_max_bytes,
                "max.partition.fetch.bytes": c.max_partition_fetch_bytes,
                "queued.max.messages.kbytes": 32768,
            }
        )
        self._assigned: list[TopicPartition] = []
        self._group = {"rebalancing": False}  # set by the rebalance callbacks

    @staticmethod
    def _tp(tp: TopicPartition, offset: int | None = None) -> Any:
        from confluent_kafka import TopicPartition as ConfluentTP

        if offset is None:
            return ConfluentTP(tp.topic, tp.partition)
        return ConfluentTP(tp.topic, tp.partition, offset)

    def assign(
        self,
        partitions: Sequence[TopicPartition],
        offsets: Mapping[TopicPartition, int] | None = None,
    ) -> None:
        from confluent_kafka import OFFSET_STORED

        at = offsets or {}
        self._assigned = list(partitions)
        self._c.assign([self._tp(tp, at.get(tp, OFFSET_STORED)) for tp in partitions])

    def subscribe(self, topics: Sequence[str]) -> None:
        state = self._group

        def revoked(_consumer: Any, _partitions: Any) -> None:
            state["rebalancing"] = True

        def assigned(_consumer: Any, _partitions: Any) -> None:
            state["rebalancing"] = False  # the client assigns them after this returns

        self._c.subscribe(list(topics), on_assign=assigned, on_revoke=revoked)

    def rebalancing(self) -> bool:
        return self._group["rebalancing"]

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition(tp.topic, tp.partition) for tp in self._c.assignment()}

    def poll_batch(self, max_records: int, timeout_s: float) -> list[Record]:
        from confluent_kafka import KafkaError

        msgs = self._c.consume(num_messages=max_records, timeout=timeout_s)
        out: list[Record] = []
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    _consume_error(err)
                continue
            raw_headers: Any = m.headers() or []
            headers = tuple((str(k), v if isinstance(v, bytes) else b"") for k, v in raw_headers)
            out.append(
                Record(
                    str(m.topic()),
                    int(m.partition() or 0),
                    int(m.offset() or 0),
                    m.key(),
                    m.value(),
                    m.timestamp()[1],
                    headers,
                )
            )
        return out

    def poll_columns(self, max_records: int, timeout_s: float) -> list[PartitionBatch]:
        from confluent_kafka import KafkaError

        out: dict[tuple[str, int], PartitionBatch] = {}
        for m in self._c.consume(num_messages=max_records, timeout=timeout_s):
            err = m.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    _consume_error(err)
                continue
            where = (str(m.topic()), int(m.partition() or 0))
            batch = out.get(where)
            if batch is None:
                batch = out[where] = PartitionBatch(*where, [], [], [], [])
            batch.offsets.append(int(m.offset() or 0))
            batch.timestamps_ms.append(m.timestamp()[1])
            batch.keys.append(m.key())
            batch.values.append(m.value())
        return list(out.values())

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        if offsets:
            try:
                self._c.commit(
                    offsets=[self._tp(tp, off) for tp, off in offsets.items()], asynchronous=False
                )
            except Exception as exc:
                if rebalanced(exc):
                    raise CommitFailedError(f"offsets not committed: {exc!r}") from exc
                raise

    def pause(self, partitions: Sequence[TopicPartition]) -> None:
        if partitions:
            self._c.pause([self._tp(tp) for tp in partitions])

    def resume(self, partitions: Sequence[TopicPartition]) -> None:
        if partitions:
            self._c.resume([self._tp(tp) for tp in partitions])

    def committed(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int | None]:
        res = self._c.committed([self._tp(tp) for tp in partitions], timeout=15)
        return {
            TopicPartition(r.topic, r.partition): (None if r.offset < 0 else int(r.offset))
            for r in res
        }

    def watermarks(
        self, partitions: Sequence[TopicPartition]
    ) -> dict[TopicPartition, tuple[int, int]]:
        out = {}
        for tp in partitions:
            low, high = self._c.get_watermark_offsets(self._tp(tp), timeout=15)
            out[tp] = (int(low), int(high))
        return out

    def seek(self, partition: TopicPartition, offset: int) -> None:
        # librdkafka only seeks partitions that are actively fetched; re-assigning with an
        # explicit start offset works in every state.
        others = [
            self._tp(tp) if tp != partition else self._tp(tp, offset) for tp in self._assigned
        ]
        self._c.assign(others)

    def position(self, partition: TopicPartition) -> int:
        return int(self._c.position([self._tp(partition)])[0].offset)

    def close(self) -> None:
        self._c.close()


class _CkAdmin:
    def __init__(self, settings: KafkaSettings, bootstrap: str) -> None:
        from confluent_kafka.admin import AdminClient

        self._settings = settings
        self._a = AdminClient(
            {"bootstrap.servers": bootstrap, **librdkafka_options(settings.security)}
        )

    def ensure_topics(self, topics: Mapping[str, int]) -> None:
        from confluent_kafka import KafkaError
        from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]

        existing = set(self._a.list_topics(timeout=15).topics)
        rf = self._settings.replication_factor
        configs = dict(self._settings.topic_configs)
        new = [NewTopic(t, n, rf, config=configs) for t, n in topics.items() if t not in existing]
        for topic, fut in (self._a.create_topics(new) if new else {}).items():
            try:
                fut.result(timeout=15)
            except Exception as exc:
                code = exc.args[0].code() if exc.args else None
                if code != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise RuntimeError(f"could not create topic {topic}: {exc}") from exc

    def partitions(self, topic: str) -> list[TopicPartition]:
        md = self._a.list_topics(topic, timeout=15).topics[topic]
        return [TopicPartition(topic, p) for p in sorted(md.partitions)]

    def close(self) -> None:
        pass


# ============================================================================ factory
@dataclass(frozen=True)
class KafkaClient:
    """Creates producers, consumers and admins of the configured client library."""

    settings: KafkaSettings
    bootstrap: str

    def producer(self) -> Producer:
        if self.settings.client == "confluent":
            return _CkProducer(self.settings, self.bootstrap)
        return _KpProducer(self.settings, self.bootstrap)

    def consumer(self, group_id: str | None = None) -> Consumer:
        if self.settings.client == "confluent":
            return _CkConsumer(self.settings, self.bootstrap, group_id)
        return _KpConsumer(self.settings, self.bootstrap, group_id)

    def admin(self) -> Admin:
        if self.settings.client == "confluent":
            return _CkAdmin(self.settings, self.bootstrap)
        return _KpAdmin(self.settings, self.bootstrap)

    def all_partitions(self, topics: Iterable[str]) -> list[TopicPartition]:
        admin = self.admin()
        try:
            return [tp for t in topics for tp in admin.partitions(t)]
        finally:
            admin.close()


def wait_for_broker(bootstrap: str, timeout_s: float) -> None:
    """Block until a broker answers metadata requests, or raise :class:`KafkaUnavailableError`."""
    from kafka import KafkaAdminClient

    deadline = time.monotonic() + timeout_s
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            # Each attempt bounded by what is left (bootstrap otherwise blocks for 30 s).
            left_ms = max(200, int((deadline - time.monotonic()) * 1000))
            admin = KafkaAdminClient(
                bootstrap_servers=bootstrap,
                request_timeout_ms=3000,
                bootstrap_timeout_ms=min(left_ms, 30_000),
            )
            admin.list_topics()
            admin.close()
            return
        except Exception as exc:
            last = exc
            time.sleep(0.2)
    raise KafkaUnavailableError(
        f"no Kafka broker answered at {bootstrap} within {timeout_s}s: {last}"
    )
