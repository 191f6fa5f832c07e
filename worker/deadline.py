"""A wall-clock deadline for a whole HTTP call.

``requests`` applies its timeout to each socket operation, so a server that
sends one byte every few seconds can keep a call open for ever. A Deadline
remembers the sockets of its call, and one watchdog thread per process shuts
them down when the time is up. A blocked read then returns at once, and the
caller sees ``deadline.expired``. This works in every Celery pool, unlike
Celery's time limits, which only the prefork pool enforces.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextvars import ContextVar

current_deadline: ContextVar[Deadline | None] = ContextVar(
    "current_deadline", default=None
)


class Deadline:
    """The end of one call, and the sockets to cut when it passes."""

    def __init__(self, timeout_s: float) -> None:
        self.expires_at = time.monotonic() + timeout_s
        self.expired = False
        self.finished = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def remaining_s(self) -> float:
        return max(0.0, self.expires_at - time.monotonic())

    def attach(self, sock: socket.socket) -> None:
        """Cut ``sock`` when the deadline passes (at once if it already has)."""
        with self._lock:
            if not self.expired:
                self._sockets.append(sock)
                return
        _shutdown(sock)

    def expire(self) -> None:
        with self._lock:
            if self.finished:
                return
            self.expired = True
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            _shutdown(sock)

    def finish(self) -> None:
        with self._lock:
            self.finished = True
            self._sockets = []


def _shutdown(sock: socket.socket) -> None:
    # The base class method, because SSLSocket.shutdown also drops its TLS state
    # while another thread may still be reading from it.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _Watchdog:
    """One thread per process that expires deadlines in time order."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Deadline]] = []
        self._counter = itertools.count()
        self._condition = threading.Condition()
        self._pid: int | None = None

    def watch(self, deadline: Deadline) -> None:
        with self._condition:
            # A forked pool process inherits no running thread: start one per process.
            if self._pid != os.getpid():
                self._pid = os.getpid()
                self._heap = []
                threading.Thread(
                    target=self._run, name="webhook-deadline", daemon=True
                ).start()
            heapq.heappush(
                self._heap, (deadline.expires_at, next(self._counter), deadline)
            )
            self._condition.notify()

    def _run(self) -> None:
        while True:
            with self._condition:
                while self._heap and self._heap[0][2].finished:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._condition.wait()
                    continue
                wait_s = self._heap[0][0] - time.monotonic()
                if wait_s > 0:
                    self._condition.wait(wait_s)
                    continue
                _, _, deadline = heapq.heappop(self._heap)
            deadline.expire()


_watchdog = _Watchdog()


@contextlib.contextmanager
def deadline_scope(timeout_s: float) -> Iterator[Deadline]:
    """Bound every socket opened or used inside the block by ``timeout_s`` in total."""
    deadline = Deadline(timeout_s)
    _watchdog.watch(deadline)
    token = current_deadline.set(deadline)
    try:
        yield deadline
    finally:
        current_deadline.reset(token)
        deadline.finish()
