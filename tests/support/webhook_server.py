"""A scriptable HTTP server on loopback that records every request it receives.

Each path maps to a handler: a function of the recorded request that returns a
``Reply``. A reply can send its body in pieces with pauses between them, so a
test can build a slow or dripping server without any mock.
"""

from __future__ import annotations

import socket
import ssl
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Request:
    """One request as the server saw it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    received_at: float
    # The client's TCP port: requests with one port came over one connection.
    client_port: int = 0

    def header(self, name: str) -> str | None:
        for key, value in self.headers.items():
            if key.lower() == name.lower():
                return value
        return None


@dataclass
class Reply:
    """The reply: status, headers, and a body sent in pieces ``pause_s`` apart."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    pieces: list[bytes] | None = None
    pause_s: float = 0.0
    delay_s: float = 0.0
    # Send no Content-Length: the body ends when the server closes the connection.
    close_delimited: bool = False
    # ``pieces`` are the whole response, status line and headers included, and
    # the connection closes after them. ``status`` and ``headers`` are unused.
    raw: bool = False
    # After the pieces, close the connection with a TCP reset (SO_LINGER 0)
    # instead of a normal close. Used with ``raw`` to cut a body short.
    reset: bool = False

    @classmethod
    def json(cls, text: str, status: int = 200, **kwargs: object) -> Reply:
        reply = cls(status=status, body=text.encode("utf-8"), **kwargs)  # type: ignore[arg-type]
        reply.headers.setdefault("Content-Type", "application/json")
        return reply


Handler = Callable[[Request], Reply]


class _QuietHTTPServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer that ignores connections the client reset or closed."""

    def handle_error(self, request: object, client_address: object) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)  # type: ignore[arg-type]


class WebhookServer:
    """A ThreadingHTTPServer on 127.0.0.1 and a free port; ``url(path)`` builds URLs.

    With ``ssl_context`` the server speaks HTTPS, and ``url`` returns https URLs.
    """

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.routes: dict[str, Handler] = {}
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        server = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                return

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                request = Request(
                    method=self.command,
                    path=self.path,
                    headers=dict(self.headers.items()),
                    body=body,
                    received_at=time.time(),
                    client_port=int(self.client_address[1]),
                )
                with server._lock:
                    server.requests.append(request)
                    handler = server.routes.get(self.path.split("?")[0])
                reply = handler(request) if handler else Reply(status=404)
                self._send(reply)

            def _send(self, reply: Reply) -> None:
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                pieces = reply.pieces if reply.pieces is not None else [reply.body]
                total = sum(len(piece) for piece in pieces)
                if reply.raw:
                    self._send_raw(pieces, reply.pause_s)
                    if reply.reset:
                        self._reset()
                    return
                try:
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    if reply.close_delimited:
                        self.send_header("Connection", "close")
                        self.close_connection = True
                    else:
                        self.send_header("Content-Length", str(total))
                    self.end_headers()
                    for index, piece in enumerate(pieces):
                        if index and reply.pause_s:
                            time.sleep(reply.pause_s)
                        self.wfile.write(piece)
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    # The client gave up (its deadline passed); nothing left to do.
                    self.close_connection = True

            def _send_raw(self, pieces: list[bytes], pause_s: float) -> None:
                self.close_connection = True
                try:
                    for index, piece in enumerate(pieces):
                        if index and pause_s:
                            time.sleep(pause_s)
                        self.wfile.write(piece)
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    return

            def _reset(self) -> None:
                # With SO_LINGER on and a zero timeout, close() sends RST at once.
                linger = struct.pack("ii", 1, 0)
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                self.rfile.close()
                self.connection.close()

            do_POST = _handle
            do_GET = _handle
            do_PUT = _handle

        self._server = _QuietHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self.scheme = "http"
        if ssl_context is not None:
            # The handshake runs in accept(); a failed one is an OSError, which
            # the server ignores before it handles the next connection.
            self._server.socket = ssl_context.wrap_socket(
                self._server.socket, server_side=True
            )
            self.scheme = "https"
        self.port = int(self._server.server_address[1])
        # A short poll interval makes stop() return in about 0.05 s instead of 0.5 s.
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            daemon=True,
        )

    def url(self, path: str) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    def route(self, path: str, handler: Handler) -> None:
        with self._lock:
            self.routes[path] = handler

    def requests_to(self, path: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.path.split("?")[0] == path]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@contextmanager
def running_server(
    ssl_context: ssl.SSLContext | None = None,
) -> Iterator[WebhookServer]:
    server = WebhookServer(ssl_context)
    server.start()
    try:
        yield server
    finally:
        server.stop()
