"""Outbound connections that only reach allowed addresses.

The host name is resolved once, each address is checked, and the socket
connects to the checked address, so a DNS answer that changes between check
and connect cannot slip through. TLS still verifies the certificate against
the host name, because urllib3 wraps the socket with the original name.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import NameResolutionError, NewConnectionError

from worker.deadline import current_deadline

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class AddressNotAllowed(Exception):
    """Every address of the host is outside the allowed networks.

    Deliberately not an OSError, so urllib3 and requests pass it through unwrapped.
    """

    def __init__(self, host: str, addresses: list[str]) -> None:
        super().__init__(
            f"host {host!r} resolves to {', '.join(addresses)}, which outbound calls "
            "may not reach; set WEBHOOK_WORKER_ALLOW_PRIVATE_NETWORKS=true only for "
            "trusted internal endpoints"
        )
        self.host = host
        self.addresses = addresses


def is_public(address: IPAddress) -> bool:
    """Return True for globally routable unicast addresses."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


class _GuardedConnectionMixin:
    """Connects only to checked addresses and ties sockets to the call's deadline."""

    allow_private_networks = False

    host: str
    port: int
    timeout: Any
    socket_options: Any
    source_address: Any
    sock: socket.socket | None

    @property
    def _resolve_host(self) -> str:
        return getattr(self, "_dns_host", self.host)

    def _new_conn(self) -> socket.socket:
        host = self._resolve_host
        try:
            infos = socket.getaddrinfo(host, self.port, type=socket.SOCK_STREAM)
        except socket.gaierror as error:
            raise NameResolutionError(self.host, self, error) from error  # type: ignore[arg-type]

        blocked: list[str] = []
        last_error: OSError | None = None
        for family, socktype, proto, _name, sockaddr in infos:
            address = ipaddress.ip_address(sockaddr[0])
            if not self.allow_private_networks and not is_public(address):
                blocked.append(str(address))
                continue
            sock = socket.socket(family, socktype, proto)
            try:
                for option in self.socket_options or ():
                    sock.setsockopt(*option)
                if isinstance(self.timeout, int | float):
                    sock.settimeout(self.timeout)
                sock.connect(sockaddr)
            except OSError as error:
                sock.close()
                last_error = error
                continue
            deadline = current_deadline.get()
            if deadline is not None:
                deadline.attach(sock)
            return sock

        if last_error is not None:
            raise NewConnectionError(
                self,  # type: ignore[arg-type]
                f"Failed to establish a new connection: {last_error}",
            ) from last_error
        raise AddressNotAllowed(self.host, blocked)

    def _attach_to_deadline(self) -> None:
        deadline = current_deadline.get()
        if deadline is not None and self.sock is not None:
            deadline.attach(self.sock)


class GuardedHTTPConnection(_GuardedConnectionMixin, HTTPConnection):
    def request(self, *args: Any, **kwargs: Any) -> None:
        self._attach_to_deadline()
        super().request(*args, **kwargs)

    def getresponse(self) -> Any:
        self._attach_to_deadline()
        return super().getresponse()


class GuardedHTTPSConnection(_GuardedConnectionMixin, HTTPSConnection):
    def request(self, *args: Any, **kwargs: Any) -> None:
        self._attach_to_deadline()
        super().request(*args, **kwargs)

    def getresponse(self) -> Any:
        self._attach_to_deadline()
        return super().getresponse()


def pool_classes(allow_private_networks: bool) -> dict[str, type[HTTPConnectionPool]]:
    """Return urllib3 pool classes whose connections apply the address check."""
    http_connection = type(
        "HTTPConnection",
        (GuardedHTTPConnection,),
        {"allow_private_networks": allow_private_networks},
    )
    https_connection = type(
        "HTTPSConnection",
        (GuardedHTTPSConnection,),
        {"allow_private_networks": allow_private_networks},
    )
    http_pool = type(
        "HTTPConnectionPool", (HTTPConnectionPool,), {"ConnectionCls": http_connection}
    )
    https_pool = type(
        "HTTPSConnectionPool",
        (HTTPSConnectionPool,),
        {"ConnectionCls": https_connection},
    )
    return {"http": http_pool, "https": https_pool}
