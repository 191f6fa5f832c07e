"""A message fetched just before the broker goes down is kept, not dropped.

kombu records a fetched message as unacknowledged in a command of its own. The
tests fetch a message from a private redis-server, stop that server, and then
let the transport record the message, as happens when a master dies between
the two commands.

A job fetched on a channel that Celery detached after a lost connection is
acknowledged through a new connection instead of stopping the worker.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from celery.worker.state import active_requests
from celery.worker.state import requests as worker_requests
from kombu import Connection
from structlog.testing import capture_logs

from tests.reliability.common import wait_until
from tests.support.redis_server import RedisServer
from worker import broker_transport
from worker.app import app

QUEUE = "record-test"


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def connect(server: RedisServer) -> Connection:
    """Return a kombu connection to ``server`` through the worker's transport."""
    return Connection(server.url, transport=broker_transport.transport_for(server.url))


def fetch_one(
    connection: Connection,
    body: Any = None,
    headers: dict[str, Any] | None = None,
) -> tuple[Any, Any]:
    """Publish one message and take it off the queue, unrecorded."""
    channel = connection.channel()
    producer = connection.Producer(channel)
    producer.publish(
        {"job": "record-me"} if body is None else body,
        routing_key=QUEUE,
        declare=[],
        retry=False,
        headers=headers,
    )
    channel.queue_declare(QUEUE)
    payload = channel._get(QUEUE)
    return channel, channel.Message(payload, channel=channel)


def test_record_retries_until_broker_returns(own_redis: RedisServer) -> None:
    connection = connect(own_redis)
    channel, message = fetch_one(connection)
    own_redis.stop()
    restart = threading.Timer(1.0, own_redis.start)
    restart.start()
    try:
        started = time.monotonic()
        with capture_logs() as logs:
            channel.qos.append(message, message.delivery_tag)
        waited_s = time.monotonic() - started
    finally:
        restart.join()
    assert 0.9 <= waited_s < broker_transport.RECORD_WINDOW_S
    record = own_redis.client().hget("unacked", message.delivery_tag)
    assert record is not None, (
        "the restarted broker has no record of the fetched message"
    )
    assert message.delivery_tag in channel.qos._delivered
    events = [entry["event"] for entry in logs]
    assert events[0] == "delivery.record_retrying"
    assert events[-1] == "delivery.recorded"
    connection.release()


def test_unrecorded_message_still_delivered(
    own_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(broker_transport.RecordingQoS, "record_window_s", 0.5)
    connection = connect(own_redis)
    channel, message = fetch_one(connection)
    own_redis.stop()
    started = time.monotonic()
    with capture_logs() as logs:
        channel.qos.append(message, message.delivery_tag)
    assert time.monotonic() - started < 5
    # Celery gets the message and can acknowledge it once the job is done.
    assert message.delivery_tag in channel.qos._delivered
    failed = [entry for entry in logs if entry["event"] == "delivery.record_failed"]
    assert len(failed) == 1
    assert "broker is reachable" in failed[0]["fix"]
    own_redis.start()
    connection.release()


def test_delivery_lines_name_the_job(
    own_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(broker_transport.RecordingQoS, "record_window_s", 0.3)
    connection = connect(own_redis)
    job = {"jobid": "delivery-7", "TenantId": "tenant-7", "Order": {"Id": "O-7"}}
    channel, message = fetch_one(connection, [[job], {}, {}], {"id": "task-7"})
    own_redis.stop()
    with capture_logs() as logs:
        channel.qos.append(message, message.delivery_tag)
    own_redis.start()
    connection.release()
    assert [entry["event"] for entry in logs] == [
        "delivery.record_retrying",
        "delivery.record_failed",
    ]
    for entry in logs:
        assert entry["task_id"] == "task-7"
        assert entry["job_id"] == "delivery-7"
        assert entry["tenant_id"] == "tenant-7"
        assert entry["order_id"] == "O-7"


@pytest.mark.parametrize(
    ("url", "transport"),
    [
        ("redis://127.0.0.1:6379/0", broker_transport.Transport),
        ("rediss://127.0.0.1:6380/0", broker_transport.Transport),
        (
            "sentinel://127.0.0.1:26379;sentinel://127.0.0.1:26380",
            broker_transport.SentinelTransport,
        ),
    ],
)
def test_transport_follows_url_scheme(url: str, transport: type) -> None:
    connection = Connection(url, transport=broker_transport.transport_for(url))
    assert type(connection.transport) is transport


def test_app_uses_recording_transport() -> None:
    with app.connection_for_read() as connection:
        assert isinstance(connection.transport, broker_transport.Transport)


class RunningJob:
    """Stand-in for the Celery request of a job that the pool runs now."""

    def __init__(self, message: Any) -> None:
        self.message = message


@contextmanager
def running(message: Any) -> Iterator[None]:
    """List ``message`` as a running job in Celery's worker state."""
    request = RunningJob(message)
    active_requests.add(request)
    try:
        yield
    finally:
        active_requests.discard(request)


class QueuedJob(RunningJob):
    """Stand-in for a request that Celery handed to the pool, not yet started."""

    _apply_result = object()


@pytest.mark.parametrize("pool_keeps_queued", [True, False])
def test_queued_job_counts_as_running(
    monkeypatch: pytest.MonkeyPatch, pool_keeps_queued: bool
) -> None:
    monkeypatch.setattr(broker_transport, "_pool_keeps_queued", pool_keeps_queued)
    queued = QueuedJob(SimpleNamespace(delivery_tag="tag-queued"))
    monkeypatch.setitem(worker_requests, "task-queued", queued)
    running_tags = broker_transport._running_tags()
    # The thread pool runs a queued job after a reconnect, so the job must not
    # go back on the queue as well. The prefork pool drops it instead.
    assert ("tag-queued" in running_tags) is pool_keeps_queued


def detach_like_celery(connection: Connection, channel: Any) -> None:
    """Detach ``channel`` from its connection first and close it afterwards.

    This is the order in which Celery's cleanup after a lost connection left
    a consumer channel in a Sentinel failover run: jobs fetched on it still
    ran and were acknowledged later.
    """
    connection.transport.channels.remove(channel)
    connection.collect()
    channel.close()


def recorded_message(connection: Connection) -> tuple[Any, Any]:
    channel, message = fetch_one(connection)
    channel.qos.append(message, message.delivery_tag)
    return channel, message


def test_detached_ack_uses_new_connection(own_redis: RedisServer) -> None:
    connection = connect(own_redis)
    channel, message = recorded_message(connection)
    client = own_redis.client()
    assert client.hexists("unacked", message.delivery_tag)
    with capture_logs() as logs, running(message):
        detach_like_celery(connection, channel)
        message.ack()
    assert not client.hexists("unacked", message.delivery_tag)
    assert client.zscore("unacked_index", message.delivery_tag) is None
    assert client.llen(QUEUE) == 0
    events = [entry["event"] for entry in logs]
    assert events == ["delivery.restore_deferred", "delivery.settled_on_new_connection"]
    assert logs[0]["running"] == 1
    assert logs[0]["waiting"] == 0


def test_detached_requeue_uses_new_connection(own_redis: RedisServer) -> None:
    connection = connect(own_redis)
    channel, message = recorded_message(connection)
    with running(message):
        detach_like_celery(connection, channel)
        message.reject(requeue=True)
    client = own_redis.client()
    assert not client.hexists("unacked", message.delivery_tag)
    assert client.llen(QUEUE) == 1


@pytest.mark.parametrize("detached", [True, False])
def test_waiting_job_restored_after_outage(
    aof_redis: RedisServer, detached: bool
) -> None:
    # Redis is down when the channel closes. A detached channel cannot use
    # kombu's restore at all; on an attached one, kombu's restore fails.
    server = aof_redis
    connection = connect(server)
    channel, message = recorded_message(connection)
    server.stop()
    restart = threading.Timer(1.0, server.start)
    with capture_logs() as logs:
        if detached:
            detach_like_celery(connection, channel)
        else:
            channel.close()
        restart.start()
        restart.join()
        client = server.client()
        restored, _ = wait_until(lambda: client.llen(QUEUE) == 1, timeout_s=15)
    assert restored, "the waiting job was not put back on the queue"
    assert not client.hexists("unacked", message.delivery_tag)
    events = [entry["event"] for entry in logs]
    assert events[0] == "delivery.restore_deferred"
    assert logs[0]["waiting"] == 1
    assert "delivery.restored" in events


def test_detached_ack_with_broker_down(aof_redis: RedisServer) -> None:
    server = aof_redis
    connection = connect(server)
    channel, message = recorded_message(connection)
    with running(message):
        detach_like_celery(connection, channel)
        server.stop()
        started = time.monotonic()
        with capture_logs() as logs:
            message.ack()
    assert time.monotonic() - started < broker_transport.SPARE_TIMEOUT_S + 2
    failed = [e for e in logs if e["event"] == "delivery.settle_failed"]
    assert len(failed) == 1
    assert failed[0]["action"] == "ack"
    assert "VISIBILITY_TIMEOUT_S" in failed[0]["detail"]
    server.start()
    # The record stays, so the job comes back after the visibility timeout.
    assert server.client().hexists("unacked", message.delivery_tag)
