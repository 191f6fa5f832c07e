"""Outbound connections that only reach allowed addresses.

The host name is resolved once, each address is checked, and the socket
connects to the checked address, so a DNS answer that changes between check
and connect cannot slip through. TLS still verifies the certificate against
the host name, because urllib3 wraps the socket with the original name.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
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
            "may not reach (private, loopback, link-local or reserved); to call a "
            "trusted internal endpoint, add its network to "
            "WEBHOOK_WORKER_ALLOWED_NETWORKS or its host name to "
            "WEBHOOK_WORKER_ALLOWED_HOSTS"
        )
        self.host = host
        self.addresses = addresses


_NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
# IPv4-translated addresses (SIIT, RFC 2765): ::ffff:0:a.b.c.d.
_IPV4_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")
# Ranges Python 3.11's is_global misses: retired site-local and RFC 9637 documentation.
_NOT_GLOBAL_V6 = (
    ipaddress.IPv6Network("fec0::/10"),
    ipaddress.IPv6Network("3fff::/20"),
)


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """Return the IPv4 address an IPv6 address carries (mapped, NAT64, 6to4), if any."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    # :: and ::1 lie in ::/96 but are IPv6's own unspecified and loopback.
    compatible = address in _IPV4_COMPATIBLE and int(address) > 1
    if compatible or address in _NAT64_WELL_KNOWN or address in _IPV4_TRANSLATED:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_public(address: IPAddress) -> bool:
    """Return True for globally routable unicast addresses.

    An IPv6 address that carries an IPv4 address is judged by that IPv4
    address, because a NAT64 or 6to4 gateway would deliver it there.
    """
    if isinstance(address, ipaddress.IPv6Address) and (
        address in _NAT64_LOCAL or any(address in net for net in _NOT_GLOBAL_V6)
    ):
        return False
    inner = embedded_ipv4(address)
    if inner is not None:
        address = inner
    return address.is_global and not address.is_multicast and not address.is_reserved


@dataclass(frozen=True)
class AddressPolicy:
    """Which addresses outbound calls may reach.

    Public unicast addresses always; private ones only when
    ``allow_private_networks`` is set, the address lies in ``allowed_networks``,
    or the host name is in ``allowed_hosts`` (compared without case).
    """

    allow_private_networks: bool = False
    allowed_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    allowed_hosts: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        hosts = frozenset(host.lower().rstrip(".") for host in self.allowed_hosts)
        object.__setattr__(self, "allowed_hosts", hosts)

    def allows(self, host: str, address: IPAddress) -> bool:
        if self.allow_private_networks or is_public(address):
            return True
        if host.lower().rstrip(".") in self.allowed_hosts:
            return True
        candidates = {address, embedded_ipv4(address) or address}
        return any(
            candidate.version == network.version and candidate in network
            for candidate in candidates
            for network in self.allowed_networks
        )


def check_host(host: str, port: int, policy: AddressPolicy) -> None:
    """Resolve ``host`` and raise AddressNotAllowed unless every address is allowed.

    Raises:
        OSError: the name does not resolve.
    """
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
    blocked = [str(a) for a in addresses if not policy.allows(host, a)]
    if blocked:
        raise AddressNotAllowed(host, blocked)


class _GuardedConnectionMixin:
    """Connects only to checked addresses and ties sockets to the call's deadline."""

    policy = AddressPolicy()

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
            if not self.policy.allows(self.host, address):
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


def pool_classes(policy: AddressPolicy) -> dict[str, type[HTTPConnectionPool]]:
    """Return urllib3 pool classes whose connections apply the address check."""
    http_connection = type(
        "HTTPConnection", (GuardedHTTPConnection,), {"policy": policy}
    )
    https_connection = type(
        "HTTPSConnection", (GuardedHTTPSConnection,), {"policy": policy}
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
