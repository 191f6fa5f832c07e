"""Hostile webhooks on loopback against StepRunner and WebhookClient.

Every server here is a test server on 127.0.0.1. The autouse ``loopback_only``
fixture refuses and reports any connect to another address, so a redirect or a
proxy setting that the worker wrongly followed would fail the test, not reach
another host.
"""

from __future__ import annotations

import gzip
import ipaddress
import ssl
import time
import tracemalloc
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.security.helpers import (
    LOOPBACK_POLICY,
    MAX_RESPONSE_BYTES,
    ForwardProxy,
    hook_connector,
    make_certificate,
    make_job,
    make_runner,
    run_once,
    run_to_end,
    running_proxy,
    write_tenant,
)
from tests.support.webhook_server import Reply, WebhookServer, running_server
from worker.netguard import AddressPolicy
from worker.step import Finished, StepRunner

TOKEN = "tok-hostile-7c1d93"
METADATA_URL = "http://169.254.169.254/latest/meta-data"
APPROVED = '{"Status":"Approved"}'


@pytest.fixture
def runners() -> Iterator[list[StepRunner]]:
    """Runners a test builds; their HTTP sessions are closed afterwards."""
    built: list[StepRunner] = []
    yield built
    for runner in built:
        runner.client.close()


def runner_for(
    runners: list[StepRunner],
    config_dir: Path,
    policy: AddressPolicy = LOOPBACK_POLICY,
    **client_options: object,
) -> StepRunner:
    runner = make_runner(config_dir, policy, **client_options)
    runners.append(runner)
    return runner


def localhost_url(server: WebhookServer, path: str = "/hook") -> str:
    return f"{server.scheme}://localhost:{server.port}{path}"


# --- the address check -----------------------------------------------------


def test_localhost_blocked(
    runners: list[StepRunner], config_dir: Path, webhook_server: WebhookServer
) -> None:
    write_tenant(config_dir, hook_connector(localhost_url(webhook_server)))
    webhook_server.route("/hook", lambda _r: Reply.json(APPROVED))
    runner = runner_for(runners, config_dir, AddressPolicy())

    result = run_once(runner)

    assert result["ActionStatus"] == "Error"
    assert result["CancelWorkflow"] is True
    assert "127.0.0.1" in result["ErrorReason"]
    assert "localhost" in result["ErrorReason"]
    assert result["HttpStatus"] is None
    assert webhook_server.requests == []


def test_localhost_warning(
    runners: list[StepRunner], config_dir: Path, webhook_server: WebhookServer
) -> None:
    write_tenant(config_dir, hook_connector(localhost_url(webhook_server)))
    runner = runner_for(runners, config_dir, AddressPolicy())

    result = run_once(runner, make_job(StopOnError=False))

    assert result["ActionStatus"] == "Warning"
    assert "127.0.0.1" in result["ErrorReason"]
    assert webhook_server.requests == []


def test_blocked_not_retried(
    runners: list[StepRunner], config_dir: Path, webhook_server: WebhookServer
) -> None:
    connector = hook_connector(
        localhost_url(webhook_server), DisableStandardErrorPolicy=False
    )
    write_tenant(config_dir, connector)
    runner = runner_for(runners, config_dir, AddressPolicy())

    outcome = runner.run((make_job(),), {})

    assert isinstance(outcome, Finished)
    assert webhook_server.requests == []


@pytest.mark.parametrize(
    "policy",
    [
        AddressPolicy(allowed_hosts=frozenset({"localhost"})),
        AddressPolicy(allowed_networks=(ipaddress.ip_network("127.0.0.0/8"),)),
        AddressPolicy(allow_private_networks=True),
    ],
    ids=["allowed-host", "allowed-network", "allow-private"],
)
def test_localhost_allowed(
    runners: list[StepRunner],
    config_dir: Path,
    webhook_server: WebhookServer,
    policy: AddressPolicy,
) -> None:
    write_tenant(config_dir, hook_connector(localhost_url(webhook_server)))
    webhook_server.route("/hook", lambda _r: Reply.json(APPROVED))
    runner = runner_for(runners, config_dir, policy)

    result = run_once(runner)

    assert result["ActionStatus"] == "Success"
    assert result["Order"]["Status"] == "Approved"
    assert len(webhook_server.requests) == 1


def test_other_host_not_allowed(
    runners: list[StepRunner], config_dir: Path, webhook_server: WebhookServer
) -> None:
    write_tenant(config_dir, hook_connector(localhost_url(webhook_server)))
    policy = AddressPolicy(allowed_hosts=frozenset({"erp.internal"}))
    runner = runner_for(runners, config_dir, policy)

    result = run_once(runner)

    assert result["ActionStatus"] == "Error"
    assert "127.0.0.1" in result["ErrorReason"]
    assert webhook_server.requests == []


# --- redirects -------------------------------------------------------------


def test_redirect_to_metadata(
    runners: list[StepRunner],
    config_dir: Path,
    webhook_server: WebhookServer,
    loopback_only: list[str],
) -> None:
    write_tenant(
        config_dir,
        hook_connector(webhook_server.url("/hook"), BearerToken="${HOSTILE_TOKEN}"),
    )
    moved = Reply(status=302, headers={"Location": METADATA_URL})
    webhook_server.route("/hook", lambda _r: moved)
    runner = runner_for(runners, config_dir)

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOSTILE_TOKEN", TOKEN)
        result = run_once(runner)

    assert result["ActionStatus"] == "Error"
    assert result["HttpStatus"] == 302
    assert "302" in result["ErrorReason"]
    assert "169.254.169.254" in result["ErrorReason"]
    assert "meta-data" not in result["ErrorReason"]
    assert result["Attempts"] == 1
    assert len(webhook_server.requests) == 1
    assert loopback_only == []


def test_redirect_standard_policy(
    runners: list[StepRunner], config_dir: Path, webhook_server: WebhookServer
) -> None:
    connector = hook_connector(
        webhook_server.url("/hook"), DisableStandardErrorPolicy=False
    )
    write_tenant(config_dir, connector)
    moved = Reply(status=307, headers={"Location": METADATA_URL})
    webhook_server.route("/hook", lambda _r: moved)
    runner = runner_for(runners, config_dir)

    outcome = runner.run((make_job(),), {})

    assert isinstance(outcome, Finished)
    assert len(webhook_server.requests) == 1


# --- TLS -------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def tls_server(certificate: tuple[Path, Path]) -> Iterator[WebhookServer]:
    cert, key = certificate
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    with running_server(context) as server:
        yield server


def test_tls_with_ca(
    runners: list[StepRunner],
    config_dir: Path,
    tls_server: WebhookServer,
    certificate: tuple[Path, Path],
) -> None:
    write_tenant(config_dir, hook_connector(tls_server.url("/hook")))
    tls_server.route("/hook", lambda _r: Reply.json(APPROVED))
    runner = runner_for(runners, config_dir, ca_bundle=str(certificate[0]))

    result = run_once(runner)

    assert tls_server.url("/hook").startswith("https://")
    assert result["ActionStatus"] == "Success"
    assert len(tls_server.requests) == 1


def test_tls_localhost_name(
    runners: list[StepRunner],
    config_dir: Path,
    tls_server: WebhookServer,
    certificate: tuple[Path, Path],
) -> None:
    write_tenant(config_dir, hook_connector(localhost_url(tls_server)))
    tls_server.route("/hook", lambda _r: Reply.json(APPROVED))
    policy = AddressPolicy(allowed_hosts=frozenset({"localhost"}))
    runner = runner_for(runners, config_dir, policy, ca_bundle=str(certificate[0]))

    result = run_once(runner)

    assert result["ActionStatus"] == "Success"
    assert len(tls_server.requests) == 1


def test_tls_without_ca(
    runners: list[StepRunner], config_dir: Path, tls_server: WebhookServer
) -> None:
    write_tenant(config_dir, hook_connector(tls_server.url("/hook")))
    tls_server.route("/hook", lambda _r: Reply.json(APPROVED))
    runner = runner_for(runners, config_dir)

    result = run_once(runner)

    assert result["ActionStatus"] == "Error"
    assert "certificate verify failed" in result["ErrorReason"]
    assert tls_server.url("/hook") in result["ErrorReason"]
    assert tls_server.requests == []


def test_https_redirect_to_http(
    runners: list[StepRunner],
    config_dir: Path,
    tls_server: WebhookServer,
    webhook_server: WebhookServer,
    certificate: tuple[Path, Path],
) -> None:
    write_tenant(
        config_dir,
        hook_connector(tls_server.url("/hook"), BearerToken="${HOSTILE_TOKEN}"),
    )
    moved = Reply(status=301, headers={"Location": webhook_server.url("/stolen")})
    tls_server.route("/hook", lambda _r: moved)
    runner = runner_for(runners, config_dir, ca_bundle=str(certificate[0]))

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOSTILE_TOKEN", TOKEN)
        result = run_once(runner)

    assert result["ActionStatus"] == "Error"
    assert result["HttpStatus"] == 301
    assert "301" in result["ErrorReason"]
    assert len(tls_server.requests) == 1
    assert tls_server.requests[0].header("Authorization") == f"Bearer {TOKEN}"
    assert webhook_server.requests == []


# --- bodies that are too large ---------------------------------------------


def inflating_reply(encoding: str, inflated_bytes: int) -> Reply:
    zeros = bytes(inflated_bytes)
    body = gzip.compress(zeros) if encoding == "gzip" else zlib.compress(zeros, 9)
    headers = {"Content-Type": "application/json", "Content-Encoding": encoding}
    return Reply(body=body, headers=headers)


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_compressed_bomb(
    runners: list[StepRunner],
    config_dir: Path,
    webhook_server: WebhookServer,
    encoding: str,
) -> None:
    inflated = 50 * 1024 * 1024
    reply = inflating_reply(encoding, inflated)
    write_tenant(config_dir, hook_connector(webhook_server.url("/hook")))
    webhook_server.route("/hook", lambda _r: reply)
    runner = runner_for(runners, config_dir)

    tracemalloc.start()
    try:
        result = run_once(runner)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert len(reply.body) < inflated // 100
    assert result["ActionStatus"] == "Error"
    assert f"larger than {MAX_RESPONSE_BYTES} bytes" in result["ErrorReason"]
    # The cap, the chunks around it and the compressed body; far below 50 MB.
    assert peak < 4 * MAX_RESPONSE_BYTES, f"peak traced memory {peak} bytes"


def status_bytes(field: str) -> int:
    """Return a ``kB`` field of /proc/self/status, such as VmRSS, in bytes."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} line in /proc/self/status")


def reset_peak_rss() -> int:
    """Reset VmHWM, the peak RSS, to the current RSS and return that RSS.

    Writing 5 to /proc/self/clear_refs does this on Linux 4.0 and later.
    """
    with open("/proc/self/clear_refs", "w", encoding="ascii") as clear_refs:
        clear_refs.write("5")
    return status_bytes("VmRSS")


def test_bomb_rss_bounded(
    runners: list[StepRunner], config_dir: Path, webhook_server: WebhookServer
) -> None:
    reply = inflating_reply("gzip", 200 * 1024 * 1024)
    write_tenant(config_dir, hook_connector(webhook_server.url("/hook")))
    webhook_server.route("/hook", lambda _r: reply)
    runner = runner_for(runners, config_dir)

    baseline = reset_peak_rss()
    result = run_once(runner)
    grown = status_bytes("VmHWM") - baseline

    assert result["ActionStatus"] == "Error"
    assert grown < 8 * MAX_RESPONSE_BYTES, f"RSS grew by {grown} bytes"


CHUNK = b" " * 65536
CHUNKED_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)


def test_endless_chunked_capped(
    runners: list[StepRunner], config_dir: Path, webhook_server: WebhookServer
) -> None:
    chunk = b"%x\r\n%s\r\n" % (len(CHUNK), CHUNK)
    # About 256 MB at most; the client must stop long before.
    pieces = [CHUNKED_HEAD, *([chunk] * 4096)]
    webhook_server.route("/hook", lambda _r: Reply(pieces=pieces, raw=True))
    write_tenant(config_dir, hook_connector(webhook_server.url("/hook")))
    runner = runner_for(runners, config_dir)

    started = time.monotonic()
    result = run_once(runner)
    elapsed = time.monotonic() - started

    assert result["ActionStatus"] == "Error"
    assert f"larger than {MAX_RESPONSE_BYTES} bytes" in result["ErrorReason"]
    assert elapsed < 5


def test_endless_chunked_timeout(
    runners: list[StepRunner], config_dir: Path, webhook_server: WebhookServer
) -> None:
    chunk = b"2\r\n  \r\n"
    # Two bytes every 0.1 s for at most 20 s; the 1 s timeout must end it.
    pieces = [CHUNKED_HEAD, *([chunk] * 200)]
    reply = Reply(pieces=pieces, raw=True, pause_s=0.1)
    webhook_server.route("/hook", lambda _r: reply)
    connector = hook_connector(webhook_server.url("/hook"), TimeOut="00:00:01")
    write_tenant(config_dir, connector)
    runner = runner_for(runners, config_dir)

    started = time.monotonic()
    result = run_once(runner)
    elapsed = time.monotonic() - started

    assert result["ActionStatus"] == "Error"
    assert "timed out after 1 s" in result["ErrorReason"]
    assert elapsed < 3


# --- bodies that are cut or unreadable -------------------------------------


def test_reset_mid_body(
    runners: list[StepRunner], config_dir: Path, webhook_server: WebhookServer
) -> None:
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        b"Content-Length: 20000\r\n\r\n"
    )
    half = b'{"Status":"Approved","Name":"' + b"x" * 9970
    reply = Reply(pieces=[head, half], raw=True, reset=True)
    webhook_server.route("/hook", lambda _r: reply)
    write_tenant(config_dir, hook_connector(webhook_server.url("/hook")))
    runner = runner_for(runners, config_dir)

    result = run_once(runner)

    assert result["ActionStatus"] == "Error"
    assert "reading the response" in result["ErrorReason"]
    assert "failed" in result["ErrorReason"]
    assert result["Order"]["Status"] == "New"


def test_reset_is_retried(
    runners: list[StepRunner], config_dir: Path, webhook_server: WebhookServer
) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"
    reply = Reply(pieces=[head, b'{"Status":'], raw=True, reset=True)
    webhook_server.route("/hook", lambda _r: reply)
    connector = hook_connector(
        webhook_server.url("/hook"), DisableStandardErrorPolicy=False
    )
    write_tenant(config_dir, connector)
    runner = runner_for(runners, config_dir)

    result = run_to_end(runner, make_job())

    assert result["ActionStatus"] == "Error"
    assert result["Attempts"] == 4
    assert len(webhook_server.requests) == 4


ENCODED_BODIES = [
    pytest.param('{"Status":"Approved"}'.encode("utf-16"), "not UTF-8", id="utf-16"),
    pytest.param(
        '{"Status":"Approved"}'.encode("utf-16-le"), "not valid JSON", id="utf-16-le"
    ),
    pytest.param('{"Name":"Caf\u00e9"}'.encode("latin-1"), "not UTF-8", id="latin-1"),
    pytest.param('{"Status":"Approved"}'.encode("utf-32"), "not UTF-8", id="utf-32"),
]


@pytest.mark.parametrize(("body", "problem"), ENCODED_BODIES)
def test_foreign_encoding(
    runners: list[StepRunner],
    config_dir: Path,
    webhook_server: WebhookServer,
    body: bytes,
    problem: str,
) -> None:
    reply = Reply(body=body, headers={"Content-Type": "application/json"})
    webhook_server.route("/hook", lambda _r: reply)
    write_tenant(config_dir, hook_connector(webhook_server.url("/hook")))
    runner = runner_for(runners, config_dir)

    result = run_once(runner)

    assert result["ActionStatus"] == "Error"
    assert problem in result["ErrorReason"]
    assert result["HttpStatus"] == 200
    assert result["Order"]["Status"] == "New"


# --- response headers ------------------------------------------------------


def test_headers_over_limit(
    runners: list[StepRunner], config_dir: Path, webhook_server: WebhookServer
) -> None:
    headers = {f"X-Pad-{i}": "a" * 1000 for i in range(8)}
    webhook_server.route("/hook", lambda _r: Reply.json(APPROVED, headers=headers))
    connector = hook_connector(
        webhook_server.url("/hook"), DisableStandardErrorPolicy=False
    )
    write_tenant(config_dir, connector)
    runner = runner_for(runners, config_dir, max_header_bytes=4096)

    outcome = runner.run((make_job(),), {})

    assert isinstance(outcome, Finished)
    result = run_once(runner, make_job("job-sec-2"))
    assert result["ActionStatus"] == "Error"
    assert "response headers" in result["ErrorReason"]
    assert "limit of 4096" in result["ErrorReason"]
    assert result["Attempts"] == 1
    assert len(webhook_server.requests) == 2


def raw_headers(lines: list[bytes]) -> Reply:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n" + b"".join(lines) + b"\r\n{}"
    return Reply(pieces=[head], raw=True)


@pytest.mark.parametrize(
    "reply",
    [
        raw_headers([b"X-H-%d: v\r\n" % i for i in range(150)]),
        raw_headers([b"X-Long: " + b"a" * 70000 + b"\r\n"]),
    ],
    ids=["150-headers", "70k-line"],
)
def test_http_client_limits(
    runners: list[StepRunner],
    config_dir: Path,
    webhook_server: WebhookServer,
    reply: Reply,
) -> None:
    webhook_server.route("/hook", lambda _r: reply)
    connector = hook_connector(
        webhook_server.url("/hook"), DisableStandardErrorPolicy=False
    )
    write_tenant(config_dir, connector)
    runner = runner_for(runners, config_dir)

    outcome = runner.run((make_job(),), {})

    assert isinstance(outcome, Finished), outcome
    result = run_once(runner, make_job("job-sec-2"))
    assert result["ActionStatus"] == "Error"
    assert "exceed the limits" in result["ErrorReason"]
    assert result["Attempts"] == 1


# --- proxies and credentials from the environment --------------------------


PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


def test_env_proxy_ignored(
    runners: list[StepRunner],
    config_dir: Path,
    webhook_server: WebhookServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with running_server() as recorder:
        for name in PROXY_VARIABLES:
            monkeypatch.setenv(name, recorder.url(""))
            monkeypatch.setenv(name.lower(), recorder.url(""))
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        webhook_server.route("/hook", lambda _r: Reply.json(APPROVED))
        write_tenant(config_dir, hook_connector(webhook_server.url("/hook")))
        runner = runner_for(runners, config_dir)

        result = run_once(runner)

        assert result["ActionStatus"] == "Success"
        assert len(webhook_server.requests) == 1
        assert recorder.requests == []


def test_netrc_ignored(
    runners: list[StepRunner],
    config_dir: Path,
    webhook_server: WebhookServer,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    netrc = tmp_path / ".netrc"
    netrc.write_text(
        "machine 127.0.0.1 login netrc-user password netrc-pass-5e1f\n"
        "default login netrc-user password netrc-pass-5e1f\n",
        encoding="utf-8",
    )
    netrc.chmod(0o600)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(netrc))
    webhook_server.route("/hook", lambda _r: Reply.json(APPROVED))
    write_tenant(config_dir, hook_connector(webhook_server.url("/hook")))
    runner = runner_for(runners, config_dir)

    result = run_once(runner)

    assert result["ActionStatus"] == "Success"
    assert len(webhook_server.requests) == 1
    assert webhook_server.requests[0].header("Authorization") is None


@pytest.fixture
def forward_proxy() -> Iterator[ForwardProxy]:
    with running_proxy() as proxy:
        yield proxy


def test_proxy_url_used(
    runners: list[StepRunner],
    config_dir: Path,
    webhook_server: WebhookServer,
    forward_proxy: ForwardProxy,
) -> None:
    webhook_server.route("/hook", lambda _r: Reply.json(APPROVED))
    write_tenant(
        config_dir,
        hook_connector(webhook_server.url("/hook"), BearerToken="${HOSTILE_TOKEN}"),
    )
    runner = runner_for(runners, config_dir, proxy_url=forward_proxy.url)

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOSTILE_TOKEN", TOKEN)
        result = run_once(runner)

    assert result["ActionStatus"] == "Success"
    assert [r.target for r in forward_proxy.requests] == [webhook_server.url("/hook")]
    assert len(webhook_server.requests) == 1
    assert webhook_server.requests[0].header("Authorization") == f"Bearer {TOKEN}"


def test_proxy_private_refused(
    runners: list[StepRunner],
    config_dir: Path,
    webhook_server: WebhookServer,
    forward_proxy: ForwardProxy,
) -> None:
    webhook_server.route("/hook", lambda _r: Reply.json(APPROVED))
    write_tenant(config_dir, hook_connector(localhost_url(webhook_server)))
    runner = runner_for(
        runners, config_dir, AddressPolicy(), proxy_url=forward_proxy.url
    )

    result = run_once(runner)

    assert result["ActionStatus"] == "Error"
    assert "127.0.0.1" in result["ErrorReason"]
    assert forward_proxy.requests == []
    assert webhook_server.requests == []


def test_proxy_drip_bounded(
    runners: list[StepRunner], config_dir: Path, webhook_server: WebhookServer
) -> None:
    # The test server acts as the proxy itself: it answers the absolute-URI
    # request with one byte every 0.3 s, 4 s in all.
    target = "http://127.0.0.1:9/hook"
    pieces = [b"{", *([b" "] * 12), b"}"]
    webhook_server.route(target, lambda _r: Reply(pieces=pieces, pause_s=0.3))
    write_tenant(config_dir, hook_connector(target, TimeOut="00:00:01"))
    runner = runner_for(runners, config_dir, proxy_url=webhook_server.url(""))

    started = time.monotonic()
    result = run_once(runner)
    elapsed = time.monotonic() - started

    assert result["ActionStatus"] == "Error"
    assert elapsed < 2.5, f"the call took {elapsed:.1f} s with a 1 s TimeOut"
