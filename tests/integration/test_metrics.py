"""The worker's Prometheus endpoint, scraped from a real worker with both pools.

One test per pool runs real jobs through a worker subprocess on the private
Redis against loopback webhooks, scrapes ``/metrics`` between the phases and
checks exact counts at the end. With the prefork pool the calls are counted in
pool processes and summed by the main process, so a count that is too low
means a process's metric file was not read.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from tests.support.raw_messages import envelope, task_headers
from tests.support.redis_server import RedisServer, free_port
from tests.support.webhook_server import Reply, Request, WebhookServer
from tests.support.worker_process import (
    WorkerNames,
    WorkerProcess,
    publish_task_message,
    read_stream,
    running_worker,
    wait_for_entries,
)

TENANT = "metrics"
# Seconds the flaky webhook requests with Retry-After, so the test can scrape
# while the worker keeps the job on its countdown.
RETRY_AFTER_S = 3
SLOW_RELEASE_TIMEOUT_S = 20.0

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def connector(connector_id: str, url: str, **fields: Any) -> dict[str, Any]:
    return {
        "Name": connector_id,
        "ConnectorId": connector_id,
        "Host": url,
        "TimeOut": "00:00:30",
        **fields,
    }


def job(connector_name: str, **step: Any) -> tuple[str, str]:
    """Return (JobId, JSON text of the argument list) of a job for one connector."""
    job_id = f"metrics-{uuid.uuid4().hex[:12]}"
    document = {
        "JobId": job_id,
        "TenantId": TENANT,
        "Step": {"Connector": connector_name, **step},
        "Order": {"Id": f"ORD-{job_id[-6:]}", "MarketId": "SE"},
    }
    return job_id, json.dumps([document])


def send(worker: WorkerProcess, args_json: str) -> None:
    publish_task_message(
        worker.redis_url, worker.names.queue, args_json, argsrepr="(metrics test)"
    )


def scrape(port: int) -> Samples:
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode("utf-8")
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            samples[key] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def wait_for_scrape(
    port: int,
    predicate: Callable[[Samples], bool],
    description: str,
    timeout_s: float = 10.0,
) -> Samples:
    """Scrape until ``predicate`` returns True, and return those samples."""
    deadline = time.monotonic() + timeout_s
    last: Samples | str = "no scrape succeeded"
    while True:
        try:
            samples = scrape(port)
        except OSError as error:
            last = f"scrape failed: {error}"
        else:
            if predicate(samples):
                return samples
            last = samples
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"{description} not seen on /metrics within {timeout_s:g} s; "
                f"last scrape: {last}"
            )
        time.sleep(0.1)


def wait_for_requests(
    webhook: WebhookServer, path: str, count: int, timeout_s: float = 10.0
) -> None:
    deadline = time.monotonic() + timeout_s
    while len(webhook.requests_to(path)) < count:
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"{len(webhook.requests_to(path))} of {count} requests reached "
                f"{path} within {timeout_s:g} s"
            )
        time.sleep(0.05)


@pytest.fixture
def release_slow() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    # Free the webhook's handler threads also when the test failed.
    event.set()


@pytest.mark.parametrize("pool", ["threads", "prefork"])
def test_metrics_exact_counts(
    pool: str,
    redis_server: RedisServer,
    config_dir: Path,
    tmp_path: Path,
    webhook_server: WebhookServer,
    release_slow: threading.Event,
) -> None:
    webhook = webhook_server
    flaky_statuses = iter([503])
    flaky_lock = threading.Lock()

    def flaky(_request: Request) -> Reply:
        with flaky_lock:
            status = next(flaky_statuses, 200)
        if status == 503:
            return Reply.json("{}", 503, headers={"Retry-After": str(RETRY_AFTER_S)})
        return Reply.json('{"Status":"Approved"}')

    def slow(_request: Request) -> Reply:
        release_slow.wait(timeout=SLOW_RELEASE_TIMEOUT_S)
        return Reply.json("{}")

    webhook.route("/ok", lambda _r: Reply.json('{"Tags":["checked"]}'))
    webhook.route("/flaky", flaky)
    webhook.route("/slow", slow)
    webhook.route("/reject", lambda _r: Reply.json('{"error":"no"}', 422))
    webhook.route(
        "/moved",
        lambda _r: Reply(status=302, headers={"Location": "https://example.com/"}),
    )
    webhook.route("/late", lambda _r: Reply.json("{}", delay_s=2.0))
    webhook.route("/garbage", lambda _r: Reply.json("not json"))
    tenant = {
        "Connectors": [
            connector("hook-ok", webhook.url("/ok")),
            connector("hook-flaky", webhook.url("/flaky")),
            connector("hook-slow", webhook.url("/slow")),
            connector("hook-reject", webhook.url("/reject")),
            connector("hook-moved", webhook.url("/moved")),
            connector(
                "hook-late",
                webhook.url("/late"),
                TimeOut="00:00:00.5000000",
                DisableStandardErrorPolicy=True,
            ),
            connector("hook-garbage", webhook.url("/garbage")),
        ]
    }
    (config_dir / f"{TENANT}.json").write_text(json.dumps(tenant), encoding="utf-8")
    port = free_port()
    client = redis.Redis.from_url(redis_server.url)

    with running_worker(
        redis_url=redis_server.url,
        config_dir=config_dir,
        log_path=tmp_path / "worker.log",
        names=WorkerNames.unique(f"metrics-{pool}"),
        pool=pool,
        concurrency=2,
        extra_env={"WEBHOOK_WORKER_METRICS_PORT": str(port)},
    ) as worker:
        results = worker.names.result_stream
        start = wait_for_scrape(
            port,
            lambda s: value(s, "webhook_step_queue_length") is not None,
            "the queue length gauge",
        )
        assert value(start, "webhook_step_queue_length") == 0
        assert value(start, "webhook_step_jobs_waiting_countdown") == 0
        for status in ("Success", "Warning", "Error"):
            assert value(start, "webhook_step_results_total", action_status=status) == 0

        # A 503 with Retry-After: the job waits on a countdown in this worker.
        flaky_id, flaky_args = job("hook-flaky")
        send(worker, flaky_args)
        wait_for_requests(webhook, "/flaky", 1)
        waiting = wait_for_scrape(
            port,
            lambda s: value(s, "webhook_step_jobs_waiting_countdown") == 1,
            "one job on a countdown",
            timeout_s=RETRY_AFTER_S - 0.5,
        )
        assert value(waiting, "webhook_step_retries_total", connector="hook-flaky") == 1
        wait_for_entries(client, results, 1, job_ids={flaky_id}, timeout_s=20)
        after_retry = scrape(port)
        assert value(after_retry, "webhook_step_jobs_waiting_countdown") == 0

        # Two calls hold both slots, so three more jobs stay in Redis.
        slow_ids = []
        for _ in range(2):
            slow_id, slow_args = job("hook-slow")
            slow_ids.append(slow_id)
            send(worker, slow_args)
        wait_for_requests(webhook, "/slow", 2)
        queued_ids = []
        for _ in range(3):
            queued_id, queued_args = job("hook-ok")
            queued_ids.append(queued_id)
            send(worker, queued_args)
        wait_for_scrape(
            port,
            lambda s: value(s, "webhook_step_queue_length") == 3,
            "three queued jobs",
            timeout_s=5,
        )
        release_slow.set()
        wait_for_entries(
            client, results, 5, job_ids={*slow_ids, *queued_ids}, timeout_s=20
        )

        # One job per outcome, an inline Host step and two dead letters.
        ok_id, ok_args = job("hook-ok")
        finished_ids = [ok_id]
        send(worker, ok_args)
        inline_id, inline_args = job(
            "Webhook", Properties=[{"Key": "Host", "Value": webhook.url("/ok")}]
        )
        finished_ids.append(inline_id)
        send(worker, inline_args)
        for name, step in (
            ("hook-reject", {"StopOnError": True, "ErrorStatus": "Failed"}),
            ("hook-moved", {}),
            ("hook-late", {}),
            ("hook-garbage", {}),
        ):
            job_id, args_json = job(name, **step)
            finished_ids.append(job_id)
            send(worker, args_json)
        send(worker, json.dumps([{"TenantId": TENANT, "Order": {"Id": "ORD-X"}}]))
        unknown_task = envelope(
            worker.names.queue,
            b'[[{"Order":{}}],{},{}]',
            task_headers(str(uuid.uuid4()), task="no.such.task"),
        )
        client.lpush(worker.names.queue, unknown_task)
        wait_for_entries(
            client, results, len(finished_ids), job_ids=set(finished_ids), timeout_s=20
        )
        wait_for_entries(client, worker.names.dead_letter_stream, 2, timeout_s=20)

        # A redelivered job whose result exists publishes nothing new.
        send(worker, ok_args)
        worker.wait_for_record(
            lambda r: r.get("event") == "job.duplicate" and r.get("job_id") == ok_id,
            description=f"job.duplicate line of {ok_id}",
        )
        final = wait_for_scrape(
            port,
            lambda s: value(s, "webhook_step_queue_length") == 0,
            "an empty queue",
        )

    result_count = len(read_stream(client, results))
    client.close()
    calls = {
        ("hook-ok", "ok"): 4,
        ("inline", "ok"): 1,
        ("hook-flaky", "unavailable"): 1,
        ("hook-flaky", "ok"): 1,
        ("hook-slow", "ok"): 2,
        ("hook-reject", "rejected"): 1,
        ("hook-moved", "redirected"): 1,
        ("hook-late", "timeout"): 1,
        ("hook-garbage", "invalid_body"): 1,
    }
    counted_calls = {
        (labels[0][1], labels[1][1]): count
        for (name, labels), count in final.items()
        if name == "webhook_step_calls_total"
    }
    assert counted_calls == calls
    durations = {
        labels[0][1]: count
        for (name, labels), count in final.items()
        if name == "webhook_step_call_duration_seconds_count"
    }
    assert durations == {
        "hook-ok": 4,
        "inline": 1,
        "hook-flaky": 2,
        "hook-slow": 2,
        "hook-reject": 1,
        "hook-moved": 1,
        "hook-late": 1,
        "hook-garbage": 1,
    }
    late_sum = value(
        final, "webhook_step_call_duration_seconds_sum", connector="hook-late"
    )
    assert late_sum is not None
    assert 0.5 <= late_sum < 2.0
    retries = {
        labels[0][1]: count
        for (name, labels), count in final.items()
        if name == "webhook_step_retries_total"
    }
    assert retries == {"hook-flaky": 1}
    assert value(final, "webhook_step_results_total", action_status="Success") == 8
    assert value(final, "webhook_step_results_total", action_status="Warning") == 3
    assert value(final, "webhook_step_results_total", action_status="Error") == 1
    assert result_count == 12
    dead_letters = {
        labels[0][1]: count
        for (name, labels), count in final.items()
        if name == "webhook_step_dead_letters_total" and count
    }
    assert dead_letters == {"no_job_id": 1, "unknown_task": 1}
    assert value(final, "webhook_step_jobs_waiting_countdown") == 0
    assert value(final, "webhook_step_queue_length") == 0
    for (_name, labels), _count in final.items():
        for label, label_value in labels:
            assert "127.0.0.1" not in label_value, (label, label_value)
