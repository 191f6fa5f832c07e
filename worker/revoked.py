"""Error results for jobs that Celery discards without running them.

Celery drops a task message when its ``expires`` time has passed or when an
operator revoked its task id, and acknowledges the message. No task code runs,
so the job would end with no result and its workflow would wait forever. The
handler here publishes an Error result for such a job instead.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any

import redis
import structlog
from celery import signals
from kombu.exceptions import OperationalError

from worker import jsontext
from worker.job import scrub_request_headers, summarize, usable_job_id
from worker.message import TASK_NAME
from worker.results import JobIdentity
from worker.runtime import get_runner
from worker.step import PROGRESS_KEY, Progress, StepRunner, redact

log = structlog.get_logger(__name__)

# How long a thread keeps trying to publish the result of a discarded job
# while Redis is unreachable.
PUBLISH_WINDOW_S = 120.0


def discard_reason(*, expired: bool, terminated: bool, expires: Any) -> str:
    """Return the Error result's reason for a discarded job."""
    if expired:
        return (
            f"the job's message expired at {expires}, so the worker did not run "
            "this delivery of it; send the job again with a later expires time, "
            "or none. A job with "
            "RunAfterOrderIsSaved runs one second after it arrives, so its "
            "expires time must be later than that"
        )
    if terminated:
        return (
            "an operator revoked the job's task with terminate while it ran, so "
            "its call may or may not have reached the webhook; send the job again "
            "if it must run"
        )
    return (
        "an operator revoked the job's task, so the worker did not run this "
        "delivery of it; send the job again if it must run"
    )


def publish_discarded(
    sender: Any = None,
    request: Any = None,
    terminated: bool = False,
    expired: bool = False,
    **_kwargs: Any,
) -> None:
    """Settle a job whose message Celery revoked or found expired.

    Runs in the consumer's thread after Celery acknowledged the message. The
    job gets an Error result, unless it has a result already or may have
    called the webhook; ``_settle`` explains the second case.
    """
    if getattr(sender, "name", None) != TASK_NAME:
        return
    args = getattr(request, "args", None)
    job = args[0] if isinstance(args, list | tuple) and args else None
    job_id = usable_job_id(job)
    identity = JobIdentity.salvage(job, job_id) if job_id else None
    reason = discard_reason(
        expired=expired,
        terminated=terminated,
        expires=getattr(request, "expires", None),
    )
    ids = {
        "task_id": getattr(request, "id", None),
        "job_id": job_id,
        "tenant_id": identity.tenant_id if identity else None,
        "order_id": identity.order_id if identity else None,
    }
    # The consumer's thread serves every job, so the ids are bound only for
    # the lines of this one.
    with structlog.contextvars.bound_contextvars(**ids):
        if job_id is None:
            log.error(
                "job.discarded_without_result",
                reason=reason,
                detail="the message has no usable JobId, so no result can name it; "
                "it goes to the dead-letter stream",
            )
            _dead_letter(request, reason)
            return
        try:
            _settle(sender, request, job, reason)
        except (redis.RedisError, OperationalError) as error:
            # Celery has acknowledged the message already, so what happens
            # next is the only trace of the job. A thread keeps trying.
            log.warning(
                "job.discarded_result_retrying",
                error=str(error),
                window_s=PUBLISH_WINDOW_S,
            )
            threading.Thread(
                target=_settle_with_retries,
                args=(sender, request, job, reason, ids),
                name="webhook-step-discard",
                daemon=True,
            ).start()


def _settle(sender: Any, request: Any, job: Any, reason: str) -> None:
    """Publish a discarded job's Error result, or send the job again.

    A message that reached a runner before, or that follows a call, may
    belong to a job whose webhook has answered while the outcome was not
    stored, for example because Redis was down. An Error result could then
    contradict the webhook, so the job is sent again without an expires
    time, under a new task id, and its call repeats with the same
    Idempotency-Key.

    Raises:
        redis.RedisError: Redis was unreachable.
        OperationalError: the broker was unreachable.
    """
    runner = get_runner()
    if _may_have_run(runner, job, request):
        sender.apply_async(
            args=list(getattr(request, "args", None) or ()),
            kwargs=dict(getattr(request, "kwargs", None) or {}),
            task_id=uuid.uuid4().hex,
            expires=None,
            argsrepr=summarize(job),
            kwargsrepr="{}",
        )
        log.warning(
            "job.discard_resent",
            reason=reason,
            detail="a delivery of this job may have called the webhook already, "
            "so it runs again without expires",
        )
        return
    finished = runner.publish_discarded(job, reason)
    if finished is not None and finished.published:
        log.info("job.discarded_result_published")


def _may_have_run(runner: StepRunner, job: Any, request: Any) -> bool:
    kwargs = getattr(request, "kwargs", None)
    progress = Progress.from_message(
        kwargs.get(PROGRESS_KEY) if isinstance(kwargs, Mapping) else None
    )
    if progress.attempts:
        return True
    job_id = usable_job_id(job)
    if runner.store is None or job_id is None:
        return False
    return runner.store.delivery_count(job_id, progress.message_name()) > 0


def _dead_letter(request: Any, reason: str) -> None:
    """Record a discarded message without a usable JobId in the dead letters."""
    args = getattr(request, "args", None)
    kwargs = getattr(request, "kwargs", None)
    record: dict[str, Any] = {
        "headers": {
            "id": getattr(request, "id", None),
            "expires": str(getattr(request, "expires", None)),
        },
        # Request-header values in the job may hold secrets.
        "body": scrub_request_headers([args, kwargs]),
    }
    try:
        text = jsontext.dumps(record)
    except (TypeError, ValueError):
        record["body"] = "(withheld: the arguments could not be encoded as JSON)"
        text = jsontext.dumps(record)
    store = get_runner().store
    if store is None:
        return
    try:
        store.dead_letter(
            f"the job was discarded: {reason}", redact(text), kind="no_job_id"
        )
    except redis.RedisError as error:
        log.error("message.dead_letter_failed", kind="no_job_id", error=str(error))


def _settle_with_retries(
    sender: Any, request: Any, job: Any, reason: str, ids: dict[str, Any]
) -> None:
    deadline = time.monotonic() + PUBLISH_WINDOW_S
    pause = 1.0
    with structlog.contextvars.bound_contextvars(**ids):
        while True:
            time.sleep(pause)
            try:
                _settle(sender, request, job, reason)
            except (redis.RedisError, OperationalError) as error:
                if time.monotonic() + pause * 2 <= deadline:
                    pause = min(pause * 2, 10.0)
                    continue
                log.error(
                    "job.discarded_result_failed",
                    error=str(error),
                    fix="Redis or the broker stayed unreachable and Celery had "
                    "already acknowledged the message; send the job again",
                )
            return


signals.task_revoked.connect(publish_discarded)
