"""A message fetched just before the broker goes down is kept, not dropped.

kombu records a fetched message as unacknowledged in a command of its own. The
tests fetch a message from a private redis-server, stop that server, and then
let the transport record the message, as happens when a master dies between
the two commands.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection
from structlog.testing import capture_logs

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


def fetch_one(connection: Connection) -> tuple[Any, Any]:
    """Publish one message and take it off the queue, unrecorded."""
    channel = connection.channel()
    producer = connection.Producer(channel)
    producer.publish({"job": "record-me"}, routing_key=QUEUE, declare=[], retry=False)
    channel.queue_declare(QUEUE)
    payload = channel._get(QUEUE)
    return channel, channel.Message(payload, channel=channel)


def test_record_retries_until_broker_returns(own_redis: RedisServer) -> None:
    connection = Connection(
        own_redis.url, transport=broker_transport.transport_for(own_redis.url)
    )
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
    connection = Connection(
        own_redis.url, transport=broker_transport.transport_for(own_redis.url)
    )
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
