"""Circuit breaker, rate limit and concurrency cap across two real workers.

Two worker processes consume one queue and share one key prefix, so the
breaker state and the limits live in Redis and apply to both. Each test
measures at a loopback receiver what the connector's owner would see.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.reliability.common import args_json, wait_until
from tests.support.redis_server import RedisServer
from tests.support.webhook_server import Reply, Request, WebhookServer, running_server
from tests.support.worker_process import (
    StreamEntry,
    WorkerNames,
    WorkerProcess,
    push_task_messages,
    running_worker,
    wait_for_entries,
)
from worker.protection import breaker_key

pytestmark = pytest.mark.reliability

TENANT_ID = "protection"
WORKERS = 2
CONCURRENCY = 4
MAX_RETRY_DELAY_S = 2
BREAKER = {
    "FailureRatio": 0.5,
    "MinimumCalls": 10,
    "Window": 30,
    "CoolDown": 3,
    "TrialCalls": 2,
}
RATE_PER_S = 10
RATE_JOBS = 30
CAP = 2
CAP_JOBS = 16
CAP_CALL_S = 0.3


@dataclass
class Receiver:
    """The loopback webhook and the switches and counters of its routes."""

    server: WebhookServer
    down: threading.Event
    lock: threading.Lock
    in_flight: int = 0
    max_in_flight: int = 0

    def flaky(self, _request: Request) -> Reply:
        if self.down.is_set():
            return Reply.json('{"error": "down"}', status=503, delay_s=0.3)
        return Reply.json("{}")

    def capped(self, _request: Request) -> Reply:
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        time.sleep(CAP_CALL_S)
        with self.lock:
            self.in_flight -= 1
        return Reply.json("{}")


@dataclass(frozen=True)
class Setup:
    receiver: Receiver
    workers: list[WorkerProcess]
    names: WorkerNames
    client: redis.Redis


def write_tenant(config_dir: Path, server: WebhookServer) -> None:
    """Write one connector per test, plus 'steady', which has no limits."""
    connectors: list[dict[str, Any]] = [
        {"Name": "Flaky", "Host": server.url("/flaky"), "CircuitBreaker": BREAKER},
        {"Name": "Steady", "Host": server.url("/steady")},
        {
            "Name": "Rated",
            "Host": server.url("/rated"),
            "MaxRequestsPerSecond": RATE_PER_S,
        },
        {
            "Name": "Capped",
            "Host": server.url("/capped"),
            "MaxConcurrentRequests": CAP,
        },
    ]
    for connector in connectors:
        connector["TimeOut"] = "00:00:05"
    document = {"Connectors": connectors}
    (config_dir / f"{TENANT_ID}.json").write_text(json.dumps(document))


def make_job(job_id: str, connector: str) -> dict[str, Any]:
    return {
        "JobId": job_id,
        "TenantId": TENANT_ID,
        "Step": {"Name": "WebhookWorkflowStep", "Connector": connector},
        "Order": {"Id": f"ORD-{job_id}", "MarketId": "SE"},
    }


@pytest.fixture(scope="module")
def setup(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Setup]:
    folder = tmp_path_factory.mktemp("protection")
    config_dir = folder / "tenants"
    config_dir.mkdir()
    names = WorkerNames.unique("protection")
    client = redis_server.client()
    with ExitStack() as stack:
        server = stack.enter_context(running_server())
        receiver = Receiver(server, threading.Event(), threading.Lock())
        server.route("/flaky", receiver.flaky)
        server.route("/steady", lambda _request: Reply.json("{}", delay_s=0.05))
        server.route("/rated", lambda _request: Reply.json("{}"))
        server.route("/capped", receiver.capped)
        write_tenant(config_dir, server)
        workers = [
            stack.enter_context(
                running_worker(
                    redis_url=redis_server.url,
                    config_dir=config_dir,
                    log_path=folder / f"worker-{index}.log",
                    names=names,
                    concurrency=CONCURRENCY,
                    extra_env={
                        "WEBHOOK_WORKER_MAX_RETRY_DELAY_S": str(MAX_RETRY_DELAY_S),
                        "WEBHOOK_WORKER_HEALTH_FILE": str(folder / f"{index}.health"),
                    },
                )
            )
            for index in range(WORKERS)
        ]
        yield Setup(receiver, workers, names, client)
    client.close()


def submit(setup: Setup, connector: str, job_ids: list[str]) -> float:
    """Enqueue one job per JobId for ``connector``; return the time it was sent."""
    push_task_messages(
        setup.client,
        setup.names.queue,
        [args_json(make_job(job_id, connector)) for job_id in job_ids],
    )
    return time.monotonic()


def results(
    setup: Setup, job_ids: list[str], timeout_s: float
) -> dict[str, dict[str, Any]]:
    """Wait for one result per JobId and return them by JobId."""
    entries: list[StreamEntry] = wait_for_entries(
        setup.client,
        setup.names.result_stream,
        len(job_ids),
        job_ids=set(job_ids),
        timeout_s=timeout_s,
    )
    return {entry.fields["job_id"]: entry.result for entry in entries}


def breaker_state(setup: Setup) -> str | None:
    key = breaker_key(setup.names.key_prefix, TENANT_ID, "Flaky")
    value = setup.client.hget(key, "state")
    return value.decode() if isinstance(value, bytes) else None


def max_in_any_second(times: list[float]) -> int:
    """Return the highest number of requests received within one second."""
    ordered = sorted(times)
    highest = 0
    start = 0
    for end, at in enumerate(ordered):
        while at - ordered[start] >= 1.0:
            start += 1
        highest = max(highest, end - start + 1)
    return highest


def test_breaker_down_and_back(setup: Setup) -> None:
    receiver = setup.receiver
    receiver.down.set()
    flaky_ids = [f"flaky-down-{index:03d}" for index in range(30)]
    steady_ids = [f"steady-{index:03d}" for index in range(30)]
    submit(setup, "Flaky", flaky_ids)

    opened, open_after_s = wait_until(
        lambda: breaker_state(setup) == "open", timeout_s=20, interval_s=0.02
    )
    assert opened, "the breaker did not open within 20 s"
    steady_sent = submit(setup, "Steady", steady_ids)
    steady = results(setup, steady_ids, timeout_s=20)
    steady_s = time.monotonic() - steady_sent
    down_results = results(setup, flaky_ids, timeout_s=40)
    down_requests = len(receiver.server.requests_to("/flaky"))
    down_s = time.monotonic() - steady_sent + open_after_s

    receiver.down.clear()
    up_sent = time.monotonic()
    up_ids = [f"flaky-up-{index:03d}" for index in range(20)]
    submit(setup, "Flaky", up_ids)
    up_results = results(setup, up_ids, timeout_s=40)
    up_s = time.monotonic() - up_sent
    closed = breaker_state(setup) is None
    stopped = [
        result
        for result in down_results.values()
        if "circuit open for connector 'Flaky'" in (result["ErrorReason"] or "")
    ]
    cool_downs = int(down_s // BREAKER["CoolDown"]) + 1
    allowed = BREAKER["MinimumCalls"] + WORKERS * CONCURRENCY
    allowed += BREAKER["TrialCalls"] * cool_downs

    print(
        f"\nbreaker: opened after {open_after_s:.2f} s; {down_requests} requests "
        f"reached the receiver in {down_s:.1f} s down for 30 jobs of 4 attempts "
        f"(bound {allowed}, {4 * len(flaky_ids)} without a breaker); "
        f"{len(stopped)} jobs ended on an open circuit after "
        f"{sum(r['Attempts'] for r in down_results.values())} HTTP calls in all; "
        f"30 jobs of another "
        f"connector took {steady_s:.2f} s meanwhile; 20 jobs after recovery took "
        f"{up_s:.2f} s, attempts "
        f"{sorted(r['Attempts'] for r in up_results.values())}"
    )
    assert all(r["ActionStatus"] == "Success" for r in steady.values())
    assert steady_s < 5.0
    assert all(r["ActionStatus"] == "Warning" for r in down_results.values())
    assert stopped, "no job ended with the circuit-open reason"
    assert down_requests <= allowed
    assert all(r["ActionStatus"] == "Success" for r in up_results.values())
    # Attempts counts HTTP calls; attempts the open breaker stopped are not in it.
    assert all(r["Attempts"] == 1 for r in up_results.values())
    assert closed, f"the breaker is {breaker_state(setup)!r} after recovery"


def test_rate_limit_two_workers(setup: Setup) -> None:
    job_ids = [f"rated-{index:03d}" for index in range(RATE_JOBS)]
    sent = submit(setup, "Rated", job_ids)
    done = results(setup, job_ids, timeout_s=30)
    elapsed_s = time.monotonic() - sent
    times = sorted(r.received_at for r in setup.receiver.server.requests_to("/rated"))
    span_s = times[-1] - times[0]
    rate = (len(times) - 1) / span_s
    busiest = max_in_any_second(times)

    print(
        f"\nrate limit {RATE_PER_S}/s: {len(times)} requests over {span_s:.2f} s "
        f"({rate:.1f}/s on average), at most {busiest} within one second; all "
        f"{len(done)} jobs done in {elapsed_s:.2f} s"
    )
    assert len(times) == RATE_JOBS
    assert all(r["ActionStatus"] == "Success" for r in done.values())
    assert all(r["Attempts"] == 1 for r in done.values())
    assert rate <= RATE_PER_S * 1.05
    # The burst of one call adds one request to any one-second interval.
    assert busiest <= RATE_PER_S + 1


def test_concurrency_cap_two_workers(setup: Setup) -> None:
    job_ids = [f"capped-{index:03d}" for index in range(CAP_JOBS)]
    sent = submit(setup, "Capped", job_ids)
    done = results(setup, job_ids, timeout_s=60)
    elapsed_s = time.monotonic() - sent
    observed = setup.receiver.max_in_flight

    print(
        f"\nconcurrency cap {CAP}: at most {observed} requests in flight with "
        f"{WORKERS} workers of {CONCURRENCY} threads; {len(done)} jobs of "
        f"{CAP_CALL_S} s calls done in {elapsed_s:.2f} s "
        f"(at least {CAP_JOBS * CAP_CALL_S / CAP:.1f} s)"
    )
    assert all(r["ActionStatus"] == "Success" for r in done.values())
    assert all(r["Attempts"] == 1 for r in done.values())
    assert observed <= CAP
    assert len(setup.receiver.server.requests_to("/capped")) == CAP_JOBS
