"""Which commit errors mean "the group rebalanced" (``stack.kafka.rebalanced``), per client."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException
from kafka import errors as kp

from stack.kafka import rebalanced


@pytest.mark.parametrize(
    "exc",
    [
        kp.CommitFailedError("the group has already rebalanced"),
        kp.RebalanceInProgressError(),
        kp.IllegalGenerationError(),
        kp.UnknownMemberIdError(),
        KafkaException(KafkaError(KafkaError.REBALANCE_IN_PROGRESS)),
        KafkaException(KafkaError(KafkaError.ILLEGAL_GENERATION)),
        KafkaException(KafkaError(KafkaError.UNKNOWN_MEMBER_ID)),
        KafkaException(KafkaError(KafkaError._ASSIGNMENT_LOST)),
    ],
    ids=repr,
)
def test_a_rebalance_under_the_commit_is_recognised(exc: BaseException) -> None:
    assert rebalanced(exc)


@pytest.mark.parametrize(
    "exc",
    [
        kp.KafkaTimeoutError(),
        kp.NodeNotReadyError(),
        KafkaException(KafkaError(KafkaError._TRANSPORT)),
        KafkaException(KafkaError(KafkaError.COORDINATOR_NOT_AVAILABLE)),
        KafkaException(),
        RuntimeError("something else"),
    ],
    ids=repr,
)
def test_other_commit_errors_are_not_taken_for_a_rebalance(exc: BaseException) -> None:
    assert not rebalanced(exc)


def test_a_refresh_cancelled_by_our_own_close_is_not_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging

    from kafka.errors import Cancelled, KafkaConnectionError

    import stack.kafka  # noqa: F401  (installs the filter)

    log = logging.getLogger("kafka.cluster")
    with caplog.at_level(logging.DEBUG, logger="kafka.cluster"):
        log.error("Metadata refresh: failed %s", Cancelled())
        log.error("Metadata refresh: failed %s", KafkaConnectionError("broker gone"))
    levels = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert levels == [
        ("DEBUG", "Metadata refresh: failed Cancelled"),
        ("ERROR", "Metadata refresh: failed KafkaConnectionError: broker gone"),
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kafka.cluster"):  # the usual level
        log.error("Metadata refresh: failed %s", Cancelled())
        log.error("Metadata refresh: failed %s", KafkaConnectionError("broker gone"))
    assert [r.levelname for r in caplog.records] == ["ERROR"]
