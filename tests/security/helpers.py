"""Shared pieces of the security tests: tenants, jobs, runners and a forward proxy."""

from __future__ import annotations

import http.client
import ipaddress
import json
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from worker import jsontext
from worker.netguard import AddressPolicy
from worker.step import PROGRESS_KEY, Finished, Outcome, Reschedule, StepRunner
from worker.tenants import TenantStore
from worker.webhook import WebhookClient

TENANT = "acme"
JOB_ID = "job-sec-1"
ORDER_TEXT = '{"Id":"1001","MarketId":"SE","Status":"New","Total":99.90}'
MAX_RESPONSE_BYTES = 1024 * 1024
# Only the test servers' own loopback network; metadata and private ranges stay closed.
LOOPBACK_POLICY = AddressPolicy(allowed_networks=(ipaddress.ip_network("127.0.0.0/8"),))


def write_tenant(config_dir: Path, *connectors: dict[str, Any]) -> None:
    path = config_dir / f"{TENANT}.json"
    path.write_text(json.dumps({"Connectors": list(connectors)}), encoding="utf-8")


def hook_connector(host: str, **fields: Any) -> dict[str, Any]:
    """Return a connector named Hook that fails at once, without retries."""
    return {
        "Name": "Hook",
        "ConnectorId": "hook-1",
        "Host": host,
        "TimeOut": "00:00:02",
        "DisableStandardErrorPolicy": True,
        **fields,
    }


def make_job(job_id: str = JOB_ID, **step_fields: Any) -> dict[str, Any]:
    step = {
        "Name": "Export",
        "Connector": "Hook",
        "StopOnError": True,
        "ErrorStatus": "ExportFailed",
        **step_fields,
    }
    return {
        "JobId": job_id,
        "TenantId": TENANT,
        "CorrelationId": "corr-sec",
        "Step": step,
        "Order": jsontext.loads(ORDER_TEXT),
    }


def make_runner(
    config_dir: Path,
    policy: AddressPolicy = LOOPBACK_POLICY,
    **client_options: Any,
) -> StepRunner:
    client_options.setdefault("max_response_bytes", MAX_RESPONSE_BYTES)
    client = WebhookClient(policy=policy, **client_options)
    return StepRunner(tenants=TenantStore(config_dir), client=client, store=None)


def finished(outcome: Outcome) -> dict[str, Any]:
    assert isinstance(outcome, Finished), outcome
    result: dict[str, Any] = json.loads(outcome.result_json)
    return result


def run_once(runner: StepRunner, job: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run one delivery, which must finish, and return the result."""
    return finished(runner.run((job or make_job(),), {}))


def run_to_end(
    runner: StepRunner, job: dict[str, Any], max_runs: int = 5
) -> dict[str, Any]:
    """Run the job, following each Reschedule at once, and return the result."""
    kwargs: dict[str, Any] = {}
    for _ in range(max_runs):
        outcome = runner.run((job,), kwargs)
        if isinstance(outcome, Reschedule):
            kwargs = {PROGRESS_KEY: outcome.progress.to_message()}
            continue
        return finished(outcome)
    raise AssertionError(f"the job did not finish within {max_runs} runs")


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """Create a self-signed certificate for 127.0.0.1 and localhost with openssl.

    Returns the certificate, which also serves as the CA bundle, and its key.
    """
    cert = directory / "cert.pem"
    key = directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


@dataclass(frozen=True)
class ProxiedRequest:
    """One request as the forward proxy received it."""

    method: str
    target: str
    headers: dict[str, str]


class ForwardProxy:
    """A plain HTTP forward proxy on 127.0.0.1 that records every request.

    It forwards absolute-URI requests (``POST http://host:port/path``) to
    loopback targets only, and returns 403 for any other target or form.
    """

    def __init__(self) -> None:
        self.requests: list[ProxiedRequest] = []
        self._lock = threading.Lock()
        proxy = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                return

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with proxy._lock:
                    proxy.requests.append(
                        ProxiedRequest(
                            self.command, self.path, dict(self.headers.items())
                        )
                    )
                target = urlsplit(self.path)
                if target.scheme != "http" or not _is_loopback_name(target.hostname):
                    self._answer(403, b"only http:// loopback targets are forwarded")
                    return
                headers = {
                    name: value
                    for name, value in self.headers.items()
                    if name.lower() not in ("proxy-connection", "connection")
                }
                upstream = http.client.HTTPConnection(
                    target.hostname or "", target.port or 80, timeout=10
                )
                try:
                    path = target.path or "/"
                    if target.query:
                        path += "?" + target.query
                    upstream.request(self.command, path, body=body, headers=headers)
                    response = upstream.getresponse()
                    content = response.read()
                    self.send_response(response.status)
                    for name, value in response.getheaders():
                        if name.lower() not in ("connection", "transfer-encoding"):
                            self.send_header(name, value)
                    if response.getheader("Content-Length") is None:
                        self.send_header("Content-Length", str(len(content)))
                    self.end_headers()
                    self.wfile.write(content)
                finally:
                    upstream.close()

            def _answer(self, status: int, text: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                self.wfile.write(text)

            do_POST = _forward
            do_GET = _forward

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            daemon=True,
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _is_loopback_name(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


@contextmanager
def running_proxy() -> Iterator[ForwardProxy]:
    proxy = ForwardProxy()
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()
