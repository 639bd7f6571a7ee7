"""Test ports come from below the ephemeral range, where client connections never land."""

from __future__ import annotations

import socket

import pytest

from stack import localstack
from stack.localstack import _ephemeral_floor, free_port


def test_free_ports_are_below_the_ephemeral_range_and_bindable() -> None:
    floor = _ephemeral_floor()
    ports = {free_port() for _ in range(20)}
    assert len(ports) > 1  # drawn, not a fixed port
    for port in ports:
        assert 1024 <= port < floor
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", port))


def test_a_block_of_ports_is_free_as_a_whole_and_skips_a_taken_neighbour(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    floor = _ephemeral_floor()
    first = free_port(block=3)
    assert first >= 1024
    assert first + 2 < floor
    for port in range(first, first + 3):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", port))
    other = free_port(block=3)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", first + 1))  # the middle one of the first block
        taken.listen()
        draws = iter([first, other])

        class Scripted:
            def randrange(self, lo: int, hi: int) -> int:
                return next(draws)

        monkeypatch.setattr(localstack.random, "SystemRandom", Scripted)
        assert free_port(block=3) == other  # the first block was refused as a whole
