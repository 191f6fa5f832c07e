"""kombu's Redis transports, changed to keep a fetched message when the broker fails.

kombu takes a message off the queue with ``BRPOP`` and then, in a second
command, records it as unacknowledged. When that second command fails, because
the master died or a failover is under way, kombu raises before the message
reaches Celery: the message is gone from the queue, from the unacknowledged
records and from the worker. These transports retry the record until a master
takes it, for up to ``RECORD_WINDOW_S``, and then hand the message to Celery
either way, so the job runs.

After a lost connection, Celery detaches kombu's connection from the old
channel while jobs fetched on it may still run. kombu would then fail on their
acknowledgement with AttributeError and stop the worker. These transports
settle such a job through a new connection made with the same settings, and
put the jobs that were waiting, not running, back on the queue the same way.

``broker_transport`` in ``worker.app`` selects them for ``redis://``,
``rediss://`` and ``sentinel://`` broker URLs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import structlog
from celery.concurrency.base import BasePool
from celery.worker.state import active_requests
from celery.worker.state import requests as worker_requests
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from redis import exceptions as redis_errors

from worker.job import usable_job_id
from worker.redis_client import is_sentinel_url
from worker.results import JobIdentity

log = structlog.get_logger(__name__)

# How long to retry recording a fetched message before running it unrecorded.
# A Sentinel failover takes a few seconds. A broker down for longer than this
# stops every other job of the worker as well.
RECORD_WINDOW_S = 30.0
_FIRST_PAUSE_S = 0.1
_MAX_PAUSE_S = 1.0
# How long to retry putting held jobs back on the queue after a lost
# connection. After that they come back after the visibility timeout.
RESTORE_WINDOW_S = 120.0
# Connect and command timeouts of the connection that settles a job fetched
# on a detached channel. This runs in the consumer's thread, so an
# unreachable broker must not hold it for long.
SPARE_TIMEOUT_S = 5.0
# Set by note_pool when the worker is ready.
_pool_keeps_queued = False
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
    restore_window_s = RESTORE_WINDOW_S
    # Set once the held jobs are being put back, so a second close of the
    # channel does not requeue a job that was delivered again meanwhile.
    _restore_started = False

    def __init__(self, channel: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(channel, *args, **kwargs)  # type: ignore[no-untyped-call]
        # kombu's Connection, kept for a spare connection once the channel is
        # detached from it.
        self._connection_info = getattr(channel.connection, "client", None)

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
                        **_job_fields(message),
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
                        **_job_fields(message),
                        attempts=attempts,
                    )
                return
            log.error(
                "delivery.record_failed",
                **_job_fields(message),
                error=error,
                attempts=attempts,
                fix=fix,
            )
            # Kept in memory only: the job runs, but if this worker dies before
            # acknowledging it, no copy is left in Redis to bring it back.
            virtual.QoS.append(self, message, delivery_tag)  # type: ignore[no-untyped-call]
            return

    def restore_unacked(self, client: Any = None) -> None:
        if self._restore_started:
            return
        if client is None and self._detached():
            # After a lost connection, Celery's cleanup detaches kombu's
            # connection before it closes this channel, and kombu's restore
            # would then fail with AttributeError and stop the worker.
            self._restore_later()
            return
        try:
            super().restore_unacked(client)  # type: ignore[no-untyped-call]
        except _OUTAGE_ERRORS:
            # The broker is down. kombu would give up, and Celery would carry
            # on, leaving the held jobs until the visibility timeout.
            self._restore_later()

    def _restore_later(self) -> None:
        """Put the held jobs that are not running back on the queue, in a thread.

        A running job settles itself when it ends. The others, waiting on a
        countdown or the save delay, were dropped from Celery's memory, so
        only their records in Redis are left. The broker is usually down at
        this moment, so a thread retries through a new connection.
        """
        self._restore_started = True
        running = _running_tags()
        waiting = [tag for tag in self._delivered if tag not in running]
        log.warning(
            "delivery.restore_deferred",
            waiting=len(waiting),
            running=len(self._delivered) - len(waiting),
            window_s=self.restore_window_s,
        )
        if waiting:
            threading.Thread(
                target=self._restore_with_retries,
                args=(waiting,),
                name="webhook-step-restore",
                daemon=True,
            ).start()

    def _restore_with_retries(self, tags: list[str]) -> None:
        deadline = time.monotonic() + self.restore_window_s
        pause = _FIRST_PAUSE_S
        while True:
            try:
                with self._spare_qos() as spare:
                    # A tag that is no longer recorded, because its job was
                    # acknowledged or restored already, is skipped by kombu.
                    for tag in tags:
                        spare.restore_by_tag(tag)
            except Exception as exc:
                if time.monotonic() + pause <= deadline:
                    time.sleep(pause)
                    pause = min(pause * 2, _MAX_PAUSE_S)
                    continue
                log.error(
                    "delivery.restore_failed",
                    held=len(tags),
                    error=f"{type(exc).__name__}: {exc}",
                    detail="the held jobs come back after VISIBILITY_TIMEOUT_S",
                    fix="check that the broker is reachable",
                )
                return
            log.info("delivery.restored", held=len(tags))
            return

    def ack(self, delivery_tag: str) -> None:
        if self._detached():
            self._settle_detached(delivery_tag, requeue=False)
            return
        super().ack(delivery_tag)  # type: ignore[no-untyped-call]

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        if self._detached():
            self._settle_detached(delivery_tag, requeue=requeue)
            return
        super().reject(delivery_tag, requeue=requeue)  # type: ignore[no-untyped-call]

    def _detached(self) -> bool:
        transport = getattr(self.channel, "connection", None)
        return getattr(transport, "client", None) is None

    def _settle_detached(self, delivery_tag: str, *, requeue: bool) -> None:
        """Acknowledge or requeue a job fetched on a detached channel.

        Runs in the consumer's thread, where an exception stops the worker,
        so a failure is logged and the record stays in Redis.
        """
        fields = _job_fields(self._delivered.get(delivery_tag))
        action = "requeue" if requeue else "ack"
        try:
            with self._spare_qos() as spare:
                if requeue:
                    spare.restore_by_tag(delivery_tag, leftmost=True)
                else:
                    spare._remove_from_indices(delivery_tag).execute()
        except Exception as exc:
            log.warning(
                "delivery.settle_failed",
                **fields,
                action=action,
                error=f"{type(exc).__name__}: {exc}",
                detail=(
                    "the job stays recorded as unacknowledged and comes back "
                    "after VISIBILITY_TIMEOUT_S"
                ),
                fix="check that the broker is reachable",
            )
        else:
            log.info("delivery.settled_on_new_connection", **fields, action=action)
        # Drop the message from this channel's memory, because the channel
        # cannot reach Redis any more.
        virtual.QoS.ack(self, delivery_tag)  # type: ignore[no-untyped-call]

    @contextmanager
    def _spare_qos(self) -> Iterator[Any]:
        info = self._connection_info
        if info is None:
            raise RuntimeError("the channel never had a broker connection")
        options = dict(info.transport_options or {})
        options.setdefault("socket_connect_timeout", SPARE_TIMEOUT_S)
        options.setdefault("socket_timeout", SPARE_TIMEOUT_S)
        spare = info.clone(transport_options=options)
        try:
            yield spare.default_channel.qos
        finally:
            spare.release()


def _job_fields(message: Any) -> dict[str, Any]:
    """Return the ids of a message's task and job for a log line.

    These lines come from the consumer's thread, outside any job's log
    context, so the ids go on each line. Only a failing delivery logs, so
    the body is decoded only then.
    """
    fields: dict[str, Any] = {"task_id": _task_id(message)}
    try:
        body = message.payload
    except Exception:
        return fields
    if not isinstance(body, list | tuple) or not body:
        return fields
    arguments = body[0]
    if not isinstance(arguments, list | tuple) or not arguments:
        return fields
    job = arguments[0]
    job_id = usable_job_id(job)
    if job_id:
        identity = JobIdentity.salvage(job, job_id)
        fields.update(
            job_id=job_id, tenant_id=identity.tenant_id, order_id=identity.order_id
        )
    return fields


def note_pool(pool: Any) -> None:
    """Record whether ``pool`` keeps the tasks queued in it across a reconnect.

    Celery's thread pool runs every task handed to it, also after a lost
    broker connection. The prefork pool's ``flush`` discards those it has not
    started. A kept task that also went back on the queue would run twice.
    """
    global _pool_keeps_queued
    # The prefork pool sets its flush on the instance when it starts.
    flush = getattr(pool, "flush", None)
    _pool_keeps_queued = flush is None or getattr(flush, "__func__", None) is (
        BasePool.flush
    )


def _running_tags() -> set[str]:
    """Return the delivery tags of the jobs that the pool runs now or will run."""
    requests = set(active_requests)
    if _pool_keeps_queued:
        requests.update(
            request
            for request in tuple(worker_requests.values())
            if getattr(request, "_apply_result", None) is not None
        )
    tags = set()
    for request in requests:
        tag = getattr(getattr(request, "message", None), "delivery_tag", None)
        if isinstance(tag, str):
            tags.add(tag)
    return tags


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
