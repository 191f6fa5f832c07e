"""Worker crashes and restarts: every job ends in exactly one result.

Each test runs real worker processes against a private Redis and a loopback
webhook, kills or stops a worker in the middle of its work, starts another one
and counts results, duplicate results, lost jobs and webhook calls.

A job held by a worker killed with SIGKILL stays unacknowledged in Redis until
the visibility timeout has passed. kombu 5.7.0 (kombu/transport/redis.py) scans
for such jobs when a worker starts and then only every 100 s, because the scan
interval of 10 s is multiplied by ``unacked_restore_throttle``, which defaults
to 10. These tests therefore start the next worker once the timeout has passed
since the kill, so that its first scan brings the jobs back.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from tests.support.redis_server import RedisServer
from tests.support.webhook_server import Reply, Request, WebhookServer
from tests.support.worker_process import (
    WorkerNames,
    WorkerProcess,
    push_task_messages,
    read_stream,
)
from worker.step import SAVE_DELAY_S

pytestmark = pytest.mark.reliability

TENANT_ID = "crashes"
HOOK_PATH = "/hook"
CONCURRENCY = 16
# Connector timeout of the test tenant. The lease on a call lasts this plus 5 s.
CONNECTOR_TIMEOUT = "00:00:05"
MAX_RETRY_DELAY_S = 5
# The worker starts only when the visibility timeout exceeds the max retry
# delay plus the largest connector timeout (30 s for inline steps) plus 15 s.
VISIBILITY_TIMEOUT_S = MAX_RETRY_DELAY_S + 30 + 15 + 1
# Hash in which kombu's Redis transport keeps the unacknowledged messages.
UNACKED_KEY = "unacked"


class RecordingHook:
    """Webhook handler that replies ``{}`` after ``delay_s``.

    ``started`` counts the requests per Idempotency-Key as they arrive.
    """

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.started: Counter[str] = Counter()
        self._lock = threading.Lock()

    def __call__(self, request: Request) -> Reply:
        key = request.header("Idempotency-Key") or ""
        with self._lock:
            self.started[key] += 1
        if self.delay_s:
            time.sleep(self.delay_s)
        return Reply.json("{}")

    def started_keys(self) -> set[str]:
        with self._lock:
            return set(self.started)

    def call_count(self) -> int:
        with self._lock:
            return sum(self.started.values())

    def repeated_keys(self) -> set[str]:
        """Return the Idempotency-Keys that the webhook received more than once."""
        with self._lock:
            return {key for key, count in self.started.items() if count > 1}


class WorkerFleet:
    """Starts workers on one queue and stops every one of them at teardown."""

    def __init__(self, redis_url: str, config_dir: Path, log_dir: Path) -> None:
        self.redis_url = redis_url
        self.config_dir = config_dir
        self.log_dir = log_dir
        self.names = WorkerNames.unique("crashes")
        self.workers: list[WorkerProcess] = []

    def start(self, label: str) -> WorkerProcess:
        worker = WorkerProcess(
            redis_url=self.redis_url,
            config_dir=self.config_dir,
            log_path=self.log_dir / f"worker-{label}.log",
            names=self.names,
            concurrency=CONCURRENCY,
            extra_env={
                "WEBHOOK_WORKER_MAX_RETRY_DELAY_S": str(MAX_RETRY_DELAY_S),
                "WEBHOOK_WORKER_VISIBILITY_TIMEOUT_S": str(VISIBILITY_TIMEOUT_S),
                "WEBHOOK_WORKER_HEALTH_FILE": str(self.log_dir / f"{label}.health"),
            },
        )
        self.workers.append(worker)
        worker.start()
        return worker

    def stop_all(self) -> None:
        for worker in self.workers:
            worker.stop()


@dataclass(frozen=True)
class Figures:
    """What one fault test measured, printed before its asserts."""

    jobs_sent: int
    results: int
    duplicates: int
    lost: int
    webhook_calls: int
    repeated_keys: int
    elapsed_s: float

    def line(self, name: str, **extra: object) -> str:
        fields = {
            "jobs_sent": self.jobs_sent,
            "results": self.results,
            "duplicates": self.duplicates,
            "lost": self.lost,
            "webhook_calls": self.webhook_calls,
            "repeated_keys": self.repeated_keys,
            "elapsed_s": f"{self.elapsed_s:.1f}",
            **extra,
        }
        return f"{name}: " + " ".join(f"{key}={value}" for key, value in fields.items())


@pytest.fixture
def fleet(
    redis_server: RedisServer,
    redis_client: redis.Redis,
    config_dir: Path,
    tmp_path: Path,
) -> Iterator[WorkerFleet]:
    # redis_client flushes the database, so no broker keys of an earlier test
    # (unacknowledged messages above all) reach these workers.
    workers = WorkerFleet(redis_server.url, config_dir, tmp_path)
    try:
        yield workers
    finally:
        workers.stop_all()


def write_tenant(config_dir: Path, webhook_url: str) -> None:
    connector = {
        "Name": "Webhook",
        "ConnectorId": "crash-hook",
        "Host": webhook_url,
        "TimeOut": CONNECTOR_TIMEOUT,
    }
    document = {"Connectors": [connector], "MarketGroups": {}}
    (config_dir / f"{TENANT_ID}.json").write_text(json.dumps(document))


def install_hook(
    webhook_server: WebhookServer, config_dir: Path, delay_s: float
) -> RecordingHook:
    hook = RecordingHook(delay_s)
    webhook_server.route(HOOK_PATH, hook)
    write_tenant(config_dir, webhook_server.url(HOOK_PATH))
    return hook


def job_args(job_id: str, *, delayed: bool = False) -> str:
    """Return the JSON text of a task's argument list: one job of the test tenant."""
    job = {
        "JobId": job_id,
        "TenantId": TENANT_ID,
        "CorrelationId": f"corr-{job_id}",
        "Step": {
            "Name": "WebhookWorkflowStep",
            "Connector": "Webhook",
            "RunAfterOrderIsSaved": delayed,
        },
        "Order": {"Id": f"ORD-{job_id}", "MarketId": "SE", "Status": "New"},
    }
    return json.dumps([job], separators=(",", ":"))


def new_job_ids(label: str, count: int) -> list[str]:
    token = WorkerNames.unique(label).key_prefix
    return [f"{token}-{index:04d}" for index in range(count)]


def result_counts(client: redis.Redis, stream: str) -> Counter[str]:
    """Return how many result entries each JobId has on ``stream``."""
    entries = read_stream(client, stream)
    return Counter(entry.fields.get("job_id", "") for entry in entries)


def wait_until(
    condition: Callable[[], bool], timeout_s: float, interval_s: float = 0.05
) -> bool:
    """Poll ``condition`` until it is true or ``timeout_s`` passed; return the last."""
    deadline = time.monotonic() + timeout_s
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)


def wait_for_results(
    client: redis.Redis, stream: str, job_ids: Sequence[str], timeout_s: float
) -> None:
    """Wait until every JobId has a result entry, at most ``timeout_s``.

    Returns also on timeout, so that the caller's asserts count what is missing.
    """
    expected = set(job_ids)
    wait_until(lambda: expected <= set(result_counts(client, stream)), timeout_s, 0.2)


def wait_until_idle(client: redis.Redis, queue: str, timeout_s: float) -> bool:
    """Wait until the queue is empty and no message is unacknowledged.

    Jobs on a countdown are unacknowledged too, so idle means that every
    message, duplicates and retries included, has been handled.
    """

    def idle() -> bool:
        return client.llen(queue) == 0 and client.hlen(UNACKED_KEY) == 0

    return wait_until(idle, timeout_s, 0.2)


def sleep_until(deadline: float) -> None:
    remaining = deadline - time.monotonic()
    if remaining > 0:
        time.sleep(remaining)


def measure(
    client: redis.Redis,
    stream: str,
    job_ids: Sequence[str],
    hook: RecordingHook,
    started: float,
) -> tuple[Figures, Counter[str]]:
    counts = result_counts(client, stream)
    figures = Figures(
        jobs_sent=len(job_ids),
        results=sum(counts.values()),
        duplicates=sum(count - 1 for count in counts.values() if count > 1),
        lost=len(set(job_ids) - set(counts)),
        webhook_calls=hook.call_count(),
        repeated_keys=len(hook.repeated_keys()),
        elapsed_s=time.monotonic() - started,
    )
    return figures, counts


def test_kill_during_slow_calls(
    fleet: WorkerFleet,
    redis_client: redis.Redis,
    webhook_server: WebhookServer,
    config_dir: Path,
) -> None:
    hook = install_hook(webhook_server, config_dir, delay_s=0.4)
    names = fleet.names
    first = fleet.start("first")
    job_ids = new_job_ids("kill", 200)
    started = time.monotonic()
    push_task_messages(redis_client, names.queue, [job_args(j) for j in job_ids])

    assert wait_until(lambda: hook.call_count() >= 60, timeout_s=30)
    first.kill(signal.SIGKILL)
    killed_at = time.monotonic()
    # A request already in the socket buffer may still reach the handler.
    time.sleep(0.2)
    held_at_kill = int(redis_client.hlen(UNACKED_KEY))
    done_at_kill = set(result_counts(redis_client, names.result_stream))
    cut_by_kill = hook.started_keys() - done_at_kill

    sleep_until(killed_at + VISIBILITY_TIMEOUT_S + 1)
    fleet.start("second")
    wait_for_results(redis_client, names.result_stream, job_ids, timeout_s=40)
    idle = wait_until_idle(redis_client, names.queue, timeout_s=20)

    figures, counts = measure(redis_client, names.result_stream, job_ids, hook, started)
    lost = set(job_ids) - set(counts)
    never_called = lost - hook.started_keys()
    print(
        figures.line(
            "kill -9 during slow calls",
            held_at_kill=held_at_kill,
            results_at_kill=len(done_at_kill),
            calls_cut_by_kill=len(cut_by_kill),
            lost_in_fetch_window=len(never_called),
        )
    )
    assert idle
    assert figures.duplicates == 0
    # NOTE: kombu pops a message with BRPOP and records it as unacknowledged
    # in a second command, so a kill -9 between the two loses that message
    # (docs/reliability.md, "Redis Sentinel failover"). Such a job was never
    # called. At most one message per worker is in that window, and any other
    # loss fails the test.
    assert lost == never_called, f"jobs lost after a call: {sorted(lost)[:10]}"
    assert len(never_called) <= 1
    assert figures.results == len(job_ids) - len(never_called)
    assert 0 < len(cut_by_kill) <= CONCURRENCY
    assert hook.repeated_keys() <= cut_by_kill
    assert figures.repeated_keys <= len(cut_by_kill)


def test_kill_during_save_delay(
    fleet: WorkerFleet,
    redis_client: redis.Redis,
    webhook_server: WebhookServer,
    config_dir: Path,
) -> None:
    hook = install_hook(webhook_server, config_dir, delay_s=0.0)
    names = fleet.names
    first = fleet.start("first")
    job_ids = new_job_ids("delay", 50)
    started = time.monotonic()
    submitted_at = time.time()
    push_task_messages(
        redis_client, names.queue, [job_args(j, delayed=True) for j in job_ids]
    )

    # Each delayed job is rescheduled once, and its countdown message is then
    # held unacknowledged by the worker until it is due.
    def all_held() -> bool:
        rescheduled = sum(
            1
            for record in first.log_records()
            if record.get("event") == "job.rescheduled"
        )
        held = int(redis_client.hlen(UNACKED_KEY))
        return rescheduled >= len(job_ids) and held >= len(job_ids)

    assert wait_until(all_held, timeout_s=10)
    received_at = time.time()
    # Kill 0.5 s after that, but before the first countdown can be due.
    kill_at = min(received_at + 0.5, submitted_at + 0.9 * SAVE_DELAY_S)
    time.sleep(max(0.0, kill_at - time.time()))
    first.kill(signal.SIGKILL)
    killed_at = time.monotonic()
    calls_before_kill = hook.call_count()
    held_at_kill = int(redis_client.hlen(UNACKED_KEY))

    sleep_until(killed_at + VISIBILITY_TIMEOUT_S + 1)
    fleet.start("second")
    wait_for_results(redis_client, names.result_stream, job_ids, timeout_s=30)
    idle = wait_until_idle(redis_client, names.queue, timeout_s=10)

    figures, counts = measure(redis_client, names.result_stream, job_ids, hook, started)
    requests = webhook_server.requests_to(HOOK_PATH)
    earliest_delay_s = min(r.received_at for r in requests) - submitted_at
    print(
        figures.line(
            "kill -9 during save delay",
            all_received_after_s=f"{received_at - submitted_at:.2f}",
            calls_before_kill=calls_before_kill,
            held_at_kill=held_at_kill,
            earliest_call_after_s=f"{earliest_delay_s:.2f}",
        )
    )
    assert idle
    assert figures.results == len(job_ids)
    assert figures.duplicates == 0
    assert figures.lost == 0
    assert set(counts) == set(job_ids)
    assert calls_before_kill < len(job_ids)
    assert held_at_kill == len(job_ids) - calls_before_kill
    assert figures.webhook_calls == len(job_ids)
    assert figures.repeated_keys == 0
    assert earliest_delay_s >= SAVE_DELAY_S


def test_two_workers_one_queue(
    fleet: WorkerFleet,
    redis_client: redis.Redis,
    webhook_server: WebhookServer,
    config_dir: Path,
) -> None:
    hook = install_hook(webhook_server, config_dir, delay_s=0.0)
    names = fleet.names
    fleet.start("first")
    fleet.start("second")
    job_ids = new_job_ids("pair", 1000)
    twice = set(job_ids[::20])
    # Each duplicate follows its original, so the two workers tend to take
    # both copies at the same time.
    messages: list[str] = []
    for job_id in job_ids:
        messages.append(job_args(job_id))
        if job_id in twice:
            messages.append(job_args(job_id))
    started = time.monotonic()
    push_task_messages(redis_client, names.queue, messages)

    wait_for_results(redis_client, names.result_stream, job_ids, timeout_s=60)
    idle = wait_until_idle(redis_client, names.queue, timeout_s=30)

    figures, counts = measure(redis_client, names.result_stream, job_ids, hook, started)
    print(
        figures.line(
            "two workers, one queue",
            messages_sent=len(messages),
            jobs_sent_twice=len(twice),
        )
    )
    assert idle
    assert figures.results == len(job_ids)
    assert figures.duplicates == 0
    assert figures.lost == 0
    assert set(counts) == set(job_ids)
    # NOTE: fails now and then, because a copy that looked for a result before
    # the other copy published it takes the lease once that is released, and
    # calls the webhook again (worker/step.py checks the result only once).
    assert figures.webhook_calls == len(job_ids)
    assert figures.repeated_keys == 0


def test_sigterm_during_slow_calls(
    fleet: WorkerFleet,
    redis_client: redis.Redis,
    webhook_server: WebhookServer,
    config_dir: Path,
) -> None:
    hook = install_hook(webhook_server, config_dir, delay_s=1.5)
    names = fleet.names
    first = fleet.start("first")
    job_ids = new_job_ids("term", 48)
    started = time.monotonic()
    push_task_messages(redis_client, names.queue, [job_args(j) for j in job_ids])

    assert wait_until(lambda: hook.call_count() >= CONCURRENCY, timeout_s=20)
    in_flight_at_term = len(hook.started_keys())
    exit_code = first.kill(signal.SIGTERM, wait_timeout_s=30)
    results_at_exit = sum(result_counts(redis_client, names.result_stream).values())
    unacked_at_exit = int(redis_client.hlen(UNACKED_KEY))

    fleet.start("second")
    # Well below the visibility timeout: no job may wait for it.
    wait_for_results(redis_client, names.result_stream, job_ids, timeout_s=30)
    idle = wait_until_idle(redis_client, names.queue, timeout_s=10)

    figures, counts = measure(redis_client, names.result_stream, job_ids, hook, started)
    print(
        figures.line(
            "SIGTERM during slow calls",
            in_flight_at_term=in_flight_at_term,
            results_at_exit=results_at_exit,
            unacked_at_exit=unacked_at_exit,
            exit_code=exit_code,
        )
    )
    assert exit_code == 0
    assert unacked_at_exit == 0
    assert results_at_exit >= in_flight_at_term
    assert idle
    assert figures.results == len(job_ids)
    assert figures.duplicates == 0
    assert figures.lost == 0
    assert set(counts) == set(job_ids)
    assert figures.webhook_calls == len(job_ids)
    assert figures.repeated_keys == 0
    assert figures.elapsed_s < VISIBILITY_TIMEOUT_S
