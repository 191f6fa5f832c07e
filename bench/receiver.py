"""A fast HTTP/1.1 keep-alive webhook receiver on loopback, and a load client for it.

The receiver is one asyncio process with a hand-written request parser, so it
serves many thousand requests a second and is not what a benchmark measures.

- ``POST /hook/<ms>`` answers a small order update after ``<ms>`` milliseconds.
- ``POST /rec/<ms>`` does the same and records the arrival time, the
  ``Idempotency-Key`` and the ``X-Bench-Due`` header of the request.
- ``GET /arrivals`` returns the recorded arrivals as JSON and clears them.

Run ``python -m bench.receiver --port P`` to serve; it prints ``ready`` once it
listens. ``python -m bench.receiver --load URL`` measures the receiver alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import threading
import time
from typing import Any

UPDATE_BODY = b'{"Status":"Approved","Tags":["bench-checked"]}'
MAX_HEADER_BYTES = 64 * 1024


def _response(status: str, body: bytes, content_type: str) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("ascii") + body


UPDATE_RESPONSE = _response("200 OK", UPDATE_BODY, "application/json")
NOT_FOUND = _response("404 Not Found", b"", "text/plain")


class Receiver:
    """State shared by all connections: the recorded arrivals."""

    def __init__(self) -> None:
        self.arrivals: list[dict[str, Any]] = []
        self.requests = 0


class ReceiverProtocol(asyncio.Protocol):
    """One keep-alive connection; requests are answered in the order they came."""

    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HEADER_BYTES:
                    self._close()
                return
            head = bytes(self.buffer[:end]).decode("latin-1")
            lines = head.split("\r\n")
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length") or 0)
            if len(self.buffer) < end + 4 + length:
                return
            del self.buffer[: end + 4 + length]
            self._handle(lines[0], headers)

    def _handle(self, request_line: str, headers: dict[str, str]) -> None:
        parts = request_line.split(" ")
        method, path = (parts[0], parts[1]) if len(parts) >= 2 else ("", "")
        self.receiver.requests += 1
        if method == "GET" and path == "/arrivals":
            arrivals, self.receiver.arrivals = self.receiver.arrivals, []
            body = json.dumps(arrivals).encode("utf-8")
            self._send(_response("200 OK", body, "application/json"))
            return
        kind, _, delay_text = path.strip("/").partition("/")
        if method != "POST" or kind not in ("hook", "rec") or not delay_text.isdigit():
            self._send(NOT_FOUND)
            return
        if kind == "rec":
            self.receiver.arrivals.append(
                {
                    "key": headers.get("idempotency-key"),
                    "at": time.time(),
                    "due": headers.get("x-bench-due"),
                }
            )
        delay_s = int(delay_text) / 1000
        if delay_s > 0:
            self.loop.call_later(delay_s, self._send, UPDATE_RESPONSE)
        else:
            self._send(UPDATE_RESPONSE)

    def _send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def serve(port: int, max_s: float) -> None:
    """Serve on 127.0.0.1:``port`` until stdin closes or ``max_s`` passes."""
    receiver = Receiver()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: ReceiverProtocol(receiver), "127.0.0.1", port, backlog=1024
    )
    stdin_closed = asyncio.Event()

    def wait_for_stdin() -> None:
        sys.stdin.read()
        loop.call_soon_threadsafe(stdin_closed.set)

    # A daemon thread, so that an open stdin cannot keep the process alive.
    threading.Thread(target=wait_for_stdin, daemon=True).start()
    print("ready", flush=True)
    async with server:
        await asyncio.wait_for(stdin_closed.wait(), timeout=max_s)


async def _load_connection(
    host: str, port: int, request: bytes, count: int, latencies: list[float]
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        for _ in range(count):
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
    finally:
        writer.close()


async def load(
    url: str, connections: int, requests: int, body: bytes
) -> dict[str, Any]:
    """POST ``requests`` times over ``connections`` keep-alive connections."""
    rest = url.split("://", 1)[1]
    address, _, path = rest.partition("/")
    host, _, port_text = address.partition(":")
    request = (
        f"POST /{path} HTTP/1.1\r\nHost: {address}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode("ascii") + body
    latencies: list[float] = []
    per_connection = max(1, requests // connections)
    started = time.perf_counter()
    await asyncio.gather(
        *(
            _load_connection(host, int(port_text), request, per_connection, latencies)
            for _ in range(connections)
        )
    )
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": len(latencies),
        "seconds": elapsed,
        "per_second": len(latencies) / elapsed,
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, help="port on 127.0.0.1 to serve on")
    parser.add_argument(
        "--max-s", type=float, default=3600.0, help="serve at most this many seconds"
    )
    parser.add_argument("--load", metavar="URL", help="measure a receiver at URL")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--body-bytes", type=int, default=4096)
    options = parser.parse_args()
    if options.load:
        body = b'{"x":"' + b"a" * max(0, options.body_bytes - 8) + b'"}'
        figures = asyncio.run(
            asyncio.wait_for(
                load(options.load, options.connections, options.requests, body), 120
            )
        )
        print(json.dumps(figures), flush=True)
        return
    if options.port is None:
        parser.error("give --port to serve or --load URL to measure")
    with contextlib.suppress(TimeoutError):
        asyncio.run(serve(options.port, options.max_s))


if __name__ == "__main__":
    main()
