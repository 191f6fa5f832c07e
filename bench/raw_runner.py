"""The raw baseline: the same POST and result append by plain threads, no queue.

Started by bench/run.py as ``python -m bench.raw_runner``. It reads commands
on stdin, one per line, and answers each on stdout:

- ``LOAD <jobs.jsonl>`` reads the jobs of the next run and prints ``loaded``.
- ``GO`` runs them on ``--concurrency`` threads and prints ``done``. A job with
  ``RunAfterOrderIsSaved`` first waits one second on a timer heap.

It exits when stdin closes.
"""

from __future__ import annotations

import argparse
import heapq
import json
import queue
import sys
import threading
import time
from typing import Any

import redis
import requests

from bench.plain_app import SAVE_DELAY_S, webhook_url

# Longest run; a stuck run ends here instead of hanging the benchmark.
MAX_RUN_S = 600.0


class RawRun:
    """One run of jobs on ``concurrency`` threads that share a ready queue."""

    def __init__(
        self, jobs: list[dict[str, Any]], client: redis.Redis, stream: str
    ) -> None:
        self.client = client
        self.stream = stream
        self.ready: queue.Queue[tuple[dict[str, Any], float | None] | None] = (
            queue.Queue()
        )
        for item in jobs:
            self.ready.put((item, None))
        self.remaining = len(jobs)
        self.lock = threading.Lock()
        self.timers: list[tuple[float, int, dict[str, Any]]] = []
        self.timer_signal = threading.Condition(self.lock)
        self.finished = threading.Event()

    def run(self, concurrency: int, sessions: list[requests.Session]) -> None:
        threads = [
            threading.Thread(target=self._work, args=(sessions[index],), daemon=True)
            for index in range(concurrency)
        ]
        threads.append(threading.Thread(target=self._release_timers, daemon=True))
        for thread in threads:
            thread.start()
        self.finished.wait(MAX_RUN_S)
        with self.lock:
            self.finished.set()
            self.timer_signal.notify()
        for _ in range(concurrency):
            self.ready.put(None)
        for thread in threads:
            thread.join(timeout=5)

    def _release_timers(self) -> None:
        with self.lock:
            while not self.finished.is_set():
                if not self.timers:
                    self.timer_signal.wait(0.5)
                    continue
                wait_s = self.timers[0][0] - time.time()
                if wait_s > 0:
                    self.timer_signal.wait(wait_s)
                    continue
                due, _, item = heapq.heappop(self.timers)
                self.ready.put((item, due))

    def _work(self, session: requests.Session) -> None:
        while True:
            entry = self.ready.get()
            if entry is None:
                return
            item, due = entry
            if item["Step"].get("RunAfterOrderIsSaved") and due is None:
                with self.lock:
                    due_at = time.time() + SAVE_DELAY_S
                    heapq.heappush(self.timers, (due_at, id(item), item))
                    self.timer_signal.notify()
                continue
            self._call(session, item, due)
            with self.lock:
                self.remaining -= 1
                if self.remaining == 0:
                    self.finished.set()

    def _call(
        self, session: requests.Session, item: dict[str, Any], due: float | None
    ) -> None:
        headers = {"Content-Type": "application/json", "Idempotency-Key": item["JobId"]}
        if due is not None:
            headers["X-Bench-Due"] = repr(due)
        order = item["Order"]
        response = session.post(
            webhook_url(item["TenantId"]),
            data=json.dumps(order),
            headers=headers,
            timeout=30,
        )
        response.raise_for_status()
        order.update(response.json())
        result = {"JobId": item["JobId"], "ActionStatus": "Success", "Order": order}
        self.client.xadd(
            self.stream, {"result": json.dumps(result), "job_id": item["JobId"]}
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--stream", required=True)
    parser.add_argument("--concurrency", type=int, default=50)
    options = parser.parse_args()
    client = redis.Redis.from_url(
        options.redis_url, max_connections=options.concurrency + 4
    )
    sessions = [requests.Session() for _ in range(options.concurrency)]
    jobs: list[dict[str, Any]] = []
    for line in sys.stdin:
        command, _, argument = line.strip().partition(" ")
        if command == "LOAD":
            with open(argument, encoding="utf-8") as source:
                jobs = [json.loads(text) for text in source if text.strip()]
            print("loaded", flush=True)
        elif command == "GO":
            RawRun(jobs, client, options.stream).run(options.concurrency, sessions)
            jobs = []
            print("done", flush=True)


if __name__ == "__main__":
    main()
