"""kombu's Redis transports, changed to keep a fetched message when the broker fails.

kombu takes a message off the queue with ``BRPOP`` and then, in a second
command, records it as unacknowledged. When that second command fails, because
the master died or a failover is under way, kombu raises before the message
reaches Celery: the message is gone from the queue, from the unacknowledged
records and from the worker. These transports retry the record until a master
takes it, for up to ``RECORD_WINDOW_S``, and then hand the message to Celery
either way, so the job runs.

``broker_transport`` in ``worker.app`` selects them for ``redis://``,
``rediss://`` and ``sentinel://`` broker URLs.
"""

from __future__ import annotations

import time
from typing import Any

import structlog
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from redis.exceptions import ReadOnlyError

from worker.redis_client import is_sentinel_url

log = structlog.get_logger(__name__)

# How long to retry recording a fetched message before running it unrecorded.
# A Sentinel failover takes a few seconds. A broker down for longer than this
# stops every other job of the worker as well.
RECORD_WINDOW_S = 30.0
_FIRST_PAUSE_S = 0.1
_MAX_PAUSE_S = 1.0


class RecordingQoS(kombu_redis.QoS):
    """Records each delivered message as unacknowledged, retrying through outages."""

    record_window_s = RECORD_WINDOW_S

    def append(self, message: Any, delivery_tag: str) -> None:
        # A replica that a failover demoted rejects writes with a READONLY error.
        retried = (*self.channel.connection_errors, ReadOnlyError)
        deadline = time.monotonic() + self.record_window_s
        pause = _FIRST_PAUSE_S
        attempts = 0
        while True:
            attempts += 1
            try:
                super().append(message, delivery_tag)  # type: ignore[no-untyped-call]
            except retried as exc:
                if attempts == 1:
                    log.warning(
                        "delivery.record_retrying",
                        task_id=_task_id(message),
                        error=f"{type(exc).__name__}: {exc}",
                        window_s=self.record_window_s,
                    )
                if time.monotonic() + pause > deadline:
                    break
                time.sleep(pause)
                pause = min(pause * 2, _MAX_PAUSE_S)
                continue
            if attempts > 1:
                log.info(
                    "delivery.recorded",
                    task_id=_task_id(message),
                    attempts=attempts,
                )
            return
        # Held in memory only: the job runs, but if this worker dies before
        # acknowledging it, no copy is left in Redis to bring it back.
        log.error(
            "delivery.record_failed",
            task_id=_task_id(message),
            attempts=attempts,
            window_s=self.record_window_s,
            fix="check that the broker is reachable; this job is held by this "
            "worker alone until it finishes",
        )
        virtual.QoS.append(self, message, delivery_tag)  # type: ignore[no-untyped-call]


def _task_id(message: Any) -> str | None:
    headers = getattr(message, "headers", None)
    if isinstance(headers, dict):
        task_id = headers.get("id")
        return task_id if isinstance(task_id, str) else None
    return None


class RecordingChannel(kombu_redis.Channel):
    QoS = RecordingQoS


class RecordingSentinelChannel(kombu_redis.SentinelChannel):
    QoS = RecordingQoS


class Transport(kombu_redis.Transport):
    """kombu's ``redis://`` transport with ``RecordingQoS``."""

    Channel = RecordingChannel


class SentinelTransport(kombu_redis.SentinelTransport):
    """kombu's ``sentinel://`` transport with ``RecordingQoS``."""

    Channel = RecordingSentinelChannel


def transport_for(broker_url: str) -> str:
    """Return the ``broker_transport`` path for a Redis or Sentinel broker URL."""
    if is_sentinel_url(broker_url):
        return f"{__name__}:SentinelTransport"
    return f"{__name__}:Transport"
