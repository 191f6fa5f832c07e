"""An example webhook receiver on loopback that approves, enriches and rejects orders.

Paths, matching the connectors in ``config/examples/tenants/acme.json``:

- ``/approve``: requires ``Authorization: Bearer <token>``; sets Status and adds a tag.
- ``/enrich``: requires Basic authentication; adds a tag, a property and a
  follow-up date.
- ``/reject``: always returns 422 with a reason.
- ``/flaky``: answers 503 the first time it sees an ``Idempotency-Key``, then approves.
- ``/echo``: requires ``X-Api-Key``; sends the order back unchanged.
"""

from __future__ import annotations

import base64
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class ReceiverCredentials:
    """Credentials the receiver accepts; the demo gives the worker the same values."""

    bearer_token: str
    basic_user: str
    basic_password: str
    stock_key: str
    inline_key: str


@dataclass
class ReceiverState:
    """Idempotency keys seen by ``/flaky`` and a count of requests per path."""

    flaky_seen: set[str] = field(default_factory=set)
    calls: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _reply(status: int, body: Any) -> tuple[int, bytes]:
    return status, json.dumps(body).encode("utf-8")


def handle(
    path: str,
    headers: dict[str, str],
    body: bytes,
    credentials: ReceiverCredentials,
    state: ReceiverState,
) -> tuple[int, bytes]:
    """Return the status and body the receiver sends for one request."""
    with state.lock:
        state.calls[path] = state.calls.get(path, 0) + 1
    authorization = headers.get("authorization", "")
    if path == "/approve":
        if authorization != f"Bearer {credentials.bearer_token}":
            return _reply(401, {"error": "missing or wrong bearer token"})
        return _reply(200, {"Status": "Approved", "Tags": ["fraud-checked"]})
    if path == "/enrich":
        pair = f"{credentials.basic_user}:{credentials.basic_password}"
        expected = "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")
        if authorization != expected:
            return _reply(401, {"error": "missing or wrong basic credentials"})
        return _reply(
            200,
            {
                "tags": ["vip"],
                "properties": [{"key": "LoyaltyTier", "value": "Gold"}],
                "followUpDate": "2026-12-11",
                "customerScore": 87,
            },
        )
    if path == "/reject":
        return _reply(422, {"error": "delivery address has no street"})
    if path == "/flaky":
        if headers.get("x-api-key") != credentials.stock_key:
            return _reply(401, {"error": "missing or wrong X-Api-Key"})
        key = headers.get("idempotency-key", "")
        with state.lock:
            first_time = key not in state.flaky_seen
            state.flaky_seen.add(key)
        if first_time:
            return _reply(503, {"error": "stock service is warming up"})
        return _reply(200, {"Status": "Reserved"})
    if path == "/echo":
        if headers.get("x-api-key") != credentials.inline_key:
            return _reply(401, {"error": "missing or wrong X-Api-Key"})
        return 200, body
    return _reply(404, {"error": f"no such path {path}"})


class Receiver:
    """The receiver: a ThreadingHTTPServer on 127.0.0.1; port 0 picks a free port."""

    def __init__(self, credentials: ReceiverCredentials, port: int = 0) -> None:
        self.state = ReceiverState()
        receiver = self

        class _RequestHandler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                headers = {name.lower(): value for name, value in self.headers.items()}
                path = self.path.split("?", 1)[0]
                status, payload = handle(
                    path, headers, body, credentials, receiver.state
                )
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self._server = ThreadingHTTPServer(("127.0.0.1", port), _RequestHandler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="demo-receiver", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
