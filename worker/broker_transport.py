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
from redis import exceptions as redis_errors

from worker.redis_client import is_sentinel_url

log = structlog.get_logger(__name__)

# How long to retry recording a fetched message before running it unrecorded.
# A Sentinel failover takes a few seconds. A broker down for longer than this
# stops every other job of the worker as well.
RECORD_WINDOW_S = 30.0
_FIRST_PAUSE_S = 0.1
_MAX_PAUSE_S = 1.0
# Errors that mean the broker cannot take writes for now. A replica that a
# failover demoted rejects writes with READONLY, and a full Redis with OOM.
# kombu's own list of connection errors also has KeyError and OSError, which
# a malformed message raises too, so it is not used here.
_OUTAGE_ERRORS = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.BusyLoadingError,
    redis_errors.ReadOnlyError,
    redis_errors.OutOfMemoryError,
)


class RecordingQoS(kombu_redis.QoS):
    """Records each delivered message as unacknowledged, retrying through outages."""

    record_window_s = RECORD_WINDOW_S

    def append(self, message: Any, delivery_tag: str) -> None:
        deadline = time.monotonic() + self.record_window_s
        pause = _FIRST_PAUSE_S
        attempts = 0
        while True:
            attempts += 1
            try:
                super().append(message, delivery_tag)  # type: ignore[no-untyped-call]
            except _OUTAGE_ERRORS as exc:
                error = f"{type(exc).__name__}: {exc}"
                if attempts == 1:
                    log.warning(
                        "delivery.record_retrying",
                        task_id=_task_id(message),
                        error=error,
                        window_s=self.record_window_s,
                    )
                if time.monotonic() + pause <= deadline:
                    time.sleep(pause)
                    pause = min(pause * 2, _MAX_PAUSE_S)
                    continue
                fix = (
                    "check that the broker is reachable; until this job finishes, "
                    "only this worker has it"
                )
            except Exception as exc:
                # Not an outage, so waiting would not help. Celery gets the
                # message and runs or dead-letters it.
                error = f"{type(exc).__name__}: {exc}"
                fix = "the message's envelope is malformed; check its producer"
            else:
                if attempts > 1:
                    log.info(
                        "delivery.recorded",
                        task_id=_task_id(message),
                        attempts=attempts,
                    )
                return
            log.error(
                "delivery.record_failed",
                task_id=_task_id(message),
                error=error,
                attempts=attempts,
                fix=fix,
            )
            # Kept in memory only: the job runs, but if this worker dies before
            # acknowledging it, no copy is left in Redis to bring it back.
            virtual.QoS.append(self, message, delivery_tag)  # type: ignore[no-untyped-call]
            return

    def restore_unacked(self, client: Any = None) -> None:
        transport = self.channel.connection
        if client is None and getattr(transport, "client", None) is None:
            # After a lost connection, Celery's cleanup detaches kombu's
            # connection before it closes this channel, and kombu's restore
            # would then fail with AttributeError and stop the worker. The
            # messages stay recorded as unacknowledged in Redis instead.
            log.warning(
                "delivery.restore_skipped",
                held=len(self._delivered),
                detail="the held jobs come back after VISIBILITY_TIMEOUT_S",
            )
            return
        super().restore_unacked(client)  # type: ignore[no-untyped-call]


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
