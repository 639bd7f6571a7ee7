"""Test ports come from below the ephemeral range, where client connections never land."""

from __future__ import annotations

import socket

from stack.localstack import _ephemeral_floor, free_port


def test_free_ports_are_below_the_ephemeral_range_and_bindable() -> None:
    floor = _ephemeral_floor()
    ports = {free_port() for _ in range(20)}
    assert len(ports) > 1  # drawn, not a fixed port
    for port in ports:
        assert 1024 <= port < floor
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", port))
