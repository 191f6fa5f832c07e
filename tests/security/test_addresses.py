"""Which addresses webhook calls may reach: table tests on address objects only.

No test here opens a socket or resolves a name. Every case is an
``ipaddress`` object passed to ``is_public`` or ``AddressPolicy.allows``.
"""

from __future__ import annotations

import ipaddress

import pytest

from worker.errors import ConfigError
from worker.netguard import AddressPolicy, IPAddress, embedded_ipv4, is_public
from worker.settings import WorkerSettings, load_settings

BLOCKED = [
    # IPv4
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback, end of 127/8"),
    ("10.0.0.1", "RFC 1918 10/8"),
    ("172.16.0.1", "RFC 1918 172.16/12"),
    ("172.31.255.255", "RFC 1918 172.16/12, last"),
    ("192.168.1.1", "RFC 1918 192.168/16"),
    ("169.254.169.254", "link-local, cloud metadata"),
    ("169.254.0.1", "link-local"),
    ("100.64.0.1", "carrier-grade NAT 100.64/10"),
    ("100.127.255.255", "carrier-grade NAT, last"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast SSDP"),
    ("240.0.0.1", "reserved 240/4"),
    ("255.255.255.255", "limited broadcast"),
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "this network 0/8"),
    ("192.0.2.1", "documentation TEST-NET-1"),
    ("198.51.100.1", "documentation TEST-NET-2"),
    ("203.0.113.1", "documentation TEST-NET-3"),
    ("198.18.0.1", "benchmarking 198.18/15"),
    ("192.0.0.1", "IETF protocol assignments"),
    # IPv6
    ("::1", "loopback"),
    ("::", "unspecified"),
    ("fe80::1", "link-local"),
    ("fc00::1", "unique local"),
    ("fd12:3456:789a::1", "unique local"),
    ("ff02::1", "multicast, link scope"),
    ("ff0e::1", "multicast, global scope"),
    ("2001:db8::1", "documentation"),
    ("100::1", "discard-only"),
    ("2001::1", "Teredo"),
    # IPv6 carrying a private IPv4 address
    ("::ffff:127.0.0.1", "IPv4-mapped loopback"),
    ("::ffff:10.0.0.1", "IPv4-mapped RFC 1918"),
    ("::ffff:169.254.169.254", "IPv4-mapped metadata"),
    ("64:ff9b::a00:1", "NAT64 of 10.0.0.1"),
    ("64:ff9b::169.254.169.254", "NAT64 of metadata"),
    ("64:ff9b::127.0.0.1", "NAT64 of loopback"),
    ("64:ff9b:1::8.8.8.8", "local-use NAT64 64:ff9b:1::/48, public inside"),
    ("64:ff9b:1::1", "local-use NAT64"),
    ("2002:a00:1::1", "6to4 of 10.0.0.1"),
    ("2002:a9fe:a9fe::1", "6to4 of metadata"),
    ("2002:7f00:1::1", "6to4 of loopback"),
    ("::127.0.0.1", "IPv4-compatible loopback"),
    ("::10.0.0.1", "IPv4-compatible RFC 1918"),
    ("::169.254.169.254", "IPv4-compatible metadata"),
]

PUBLIC = [
    ("8.8.8.8", "public IPv4"),
    ("1.1.1.1", "public IPv4"),
    ("172.32.0.1", "just above 172.16/12"),
    ("100.128.0.1", "just above 100.64/10"),
    ("2606:4700::1111", "public IPv6"),
    ("2001:4860:4860::8888", "public IPv6"),
    ("::ffff:8.8.8.8", "IPv4-mapped public"),
    ("64:ff9b::8.8.8.8", "NAT64 of a public address"),
    ("2002:808:808::1", "6to4 of a public address"),
    ("::8.8.8.8", "IPv4-compatible public"),
]

EMBEDDED = [
    ("::ffff:10.0.0.1", "10.0.0.1"),
    ("64:ff9b::a00:1", "10.0.0.1"),
    ("2002:a9fe:a9fe::1", "169.254.169.254"),
    ("::8.8.8.8", "8.8.8.8"),
    ("2606:4700::1111", None),
    ("fd00::1", None),
    ("10.0.0.1", None),
]

# Addresses the docs refuse ("reserved", "documentation") that is_public passes.
RESERVED_GAPS = [
    ("::ffff:0:127.0.0.1", "IPv4-translated (SIIT) loopback, ::ffff:0:0/96"),
    ("::ffff:0:a9fe:a9fe", "IPv4-translated (SIIT) metadata"),
    ("fec0::1", "deprecated site-local fec0::/10"),
    ("4000::1", "IANA reserved 4000::/3"),
    ("3fff::1", "documentation 3fff::/20 (RFC 9637)"),
]


def address(text: str) -> IPAddress:
    return ipaddress.ip_address(text)


@pytest.mark.parametrize(("text", "kind"), BLOCKED)
def test_blocked_not_public(text: str, kind: str) -> None:
    assert is_public(address(text)) is False, kind


@pytest.mark.parametrize(("text", "kind"), BLOCKED)
def test_default_policy_blocks(text: str, kind: str) -> None:
    assert AddressPolicy().allows("example.com", address(text)) is False, kind


@pytest.mark.parametrize(("text", "kind"), PUBLIC)
def test_public_is_public(text: str, kind: str) -> None:
    assert is_public(address(text)) is True, kind


@pytest.mark.parametrize(("text", "kind"), PUBLIC)
def test_default_policy_allows_public(text: str, kind: str) -> None:
    assert AddressPolicy().allows("example.com", address(text)) is True, kind


@pytest.mark.parametrize(("text", "inner"), EMBEDDED)
def test_embedded_ipv4(text: str, inner: str | None) -> None:
    expected = ipaddress.IPv4Address(inner) if inner else None
    assert embedded_ipv4(address(text)) == expected


@pytest.mark.parametrize(("text", "kind"), RESERVED_GAPS)
def test_reserved_gap(text: str, kind: str) -> None:
    assert is_public(address(text)) is False, kind


@pytest.mark.parametrize(("text", "kind"), BLOCKED)
def test_allow_private_opens_all(text: str, kind: str) -> None:
    policy = AddressPolicy(allow_private_networks=True)
    assert policy.allows("example.com", address(text)) is True, kind


# --- allowed_networks ------------------------------------------------------


NETWORK_CASES = [
    ("10.20.0.0/16", "10.20.3.4", True),
    ("10.20.0.0/16", "10.21.0.1", False),
    ("10.20.0.0/16", "::ffff:10.20.3.4", True),
    ("10.20.0.0/16", "64:ff9b::a14:304", True),
    ("10.20.0.0/16", "2002:a14:304::1", True),
    ("10.20.0.0/16", "169.254.169.254", False),
    ("127.0.0.0/8", "127.0.0.1", True),
    ("127.0.0.0/8", "::ffff:127.0.0.1", True),
    ("fd00:1::/64", "fd00:1::5", True),
    ("fd00:1::/64", "fd00:2::5", False),
    ("fd00:1::/64", "10.0.0.1", False),
    ("169.254.169.254/32", "169.254.169.254", True),
    ("169.254.169.254/32", "169.254.169.253", False),
]


@pytest.mark.parametrize(("network", "text", "allowed"), NETWORK_CASES)
def test_allowed_networks(network: str, text: str, allowed: bool) -> None:
    policy = AddressPolicy(allowed_networks=(ipaddress.ip_network(network),))
    assert policy.allows("internal.example", address(text)) is allowed


def test_allowed_network_ipv6_loopback() -> None:
    policy = AddressPolicy(allowed_networks=(ipaddress.ip_network("::1/128"),))
    assert policy.allows("internal.example", address("::1")) is True


# --- allowed_hosts ---------------------------------------------------------


HOST_CASES = [
    ("erp.internal", True),
    ("ERP.Internal", True),
    ("erp.internal.", True),
    ("ERP.INTERNAL.", True),
    ("erp.internal.evil.example", False),
    ("xerp.internal", False),
    ("internal", False),
]


@pytest.mark.parametrize(("host", "allowed"), HOST_CASES)
def test_allowed_hosts(host: str, allowed: bool) -> None:
    policy = AddressPolicy(allowed_hosts=frozenset({"erp.internal"}))
    assert policy.allows(host, address("10.1.2.3")) is allowed


def test_allowed_host_public_any() -> None:
    policy = AddressPolicy(allowed_hosts=frozenset({"erp.internal"}))
    assert policy.allows("other.example", address("8.8.8.8")) is True


def test_allowed_host_other_blocked() -> None:
    policy = AddressPolicy(allowed_hosts=frozenset({"erp.internal"}))
    assert policy.allows("other.example", address("169.254.169.254")) is False


# --- settings --------------------------------------------------------------


def settings_from_env(monkeypatch: pytest.MonkeyPatch, **values: str) -> WorkerSettings:
    for name, value in values.items():
        monkeypatch.setenv(f"WEBHOOK_WORKER_{name}", value)
    return load_settings()


def test_settings_network_list(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_from_env(
        monkeypatch, ALLOWED_NETWORKS=" 10.20.0.0/16 , fd00:1::/64,,"
    )
    policy = settings.address_policy()
    assert settings.allowed_networks == ["10.20.0.0/16", "fd00:1::/64"]
    assert policy.allows("a.example", address("10.20.9.9")) is True
    assert policy.allows("a.example", address("fd00:1::9")) is True
    assert policy.allows("a.example", address("10.21.0.1")) is False
    assert policy.allows("a.example", address("169.254.169.254")) is False


def test_settings_network_host_bits(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_from_env(monkeypatch, ALLOWED_NETWORKS="10.20.1.7/16")
    policy = settings.address_policy()
    assert policy.allows("a.example", address("10.20.200.1")) is True


def test_settings_host_list(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_from_env(
        monkeypatch, ALLOWED_HOSTS="ERP.Internal., crm.internal"
    )
    policy = settings.address_policy()
    assert policy.allowed_hosts == frozenset({"erp.internal", "crm.internal"})
    assert policy.allows("erp.internal", address("10.0.0.1")) is True
    assert policy.allows("CRM.INTERNAL.", address("10.0.0.1")) is True
    assert policy.allows("hr.internal", address("10.0.0.1")) is False


def test_settings_default_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ALLOW_PRIVATE_NETWORKS", "ALLOWED_NETWORKS", "ALLOWED_HOSTS"):
        monkeypatch.delenv(f"WEBHOOK_WORKER_{name}", raising=False)
    policy = load_settings().address_policy()
    assert policy == AddressPolicy()


@pytest.mark.parametrize(
    "value", ["10.0.0.0/33", "not-a-network", "10.0.0.0/8,300.1.1.1/32", "fd00::/129"]
)
def test_settings_invalid_network(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("WEBHOOK_WORKER_ALLOWED_NETWORKS", value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    bad = next(item for item in value.split(",") if item != "10.0.0.0/8")
    assert "WEBHOOK_WORKER_ALLOWED_NETWORKS" in message
    assert repr(bad) in message
