"""Fixtures of the security tests: outbound connections stay on loopback."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from typing import Any

import pytest


def _is_loopback(address: Any) -> bool:
    try:
        return ipaddress.ip_address(address[0]).is_loopback
    except (TypeError, ValueError, IndexError):
        return False


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Reject every IPv4 or IPv6 connect to a non-loopback address, and record it.

    A safety net for tests that feed hostile URLs to the worker: even a bug in
    the code under test cannot reach another host. The test fails afterwards
    when any such connect was attempted.
    """
    attempts: list[str] = []
    original_connect = socket.socket.connect
    original_connect_ex = socket.socket.connect_ex

    def refuse(sock: socket.socket, address: Any) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(
            address
        ):
            attempts.append(str(address))
            raise ConnectionRefusedError(
                f"the security tests allow only loopback connections, not {address!r}"
            )

    def connect(self: socket.socket, address: Any) -> None:
        refuse(self, address)
        original_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        refuse(self, address)
        return original_connect_ex(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    yield attempts
    assert attempts == [], f"connects to non-loopback addresses were tried: {attempts}"
