"""The one-second save delay, set when a job arrives instead of by republishing it.

A job whose step has ``RunAfterOrderIsSaved`` and that a system service started
must wait one second before its call. The task's Celery strategy looks at each
message as the worker receives it and gives such a job an ETA one second
ahead, as if the producer had set a countdown. The message stays
unacknowledged in Redis while the worker keeps it in memory, and no pool slot
is busy until it is due. A countdown copy published by the task itself would
cost a pool slot, a publish and a second delivery per job.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from celery.worker.strategy import default as default_strategy

from worker.casing import get_any_case
from worker.celery_output import body_shape_problem
from worker.job import usable_job_id
from worker.results import JobIdentity
from worker.step import PROGRESS_KEY, SAVE_DELAY_S

log = structlog.get_logger(__name__)

# Message header that marks a delivery whose save delay the strategy set. Its
# value is a random token made when this module is imported, before a prefork
# pool forks, so a producer cannot forge the mark: Celery also copies fields
# of the message body's "embed" part into the task request.
SAVE_DELAY_HEADER = "webhook_step_save_delay"
_DELAY_MARK = secrets.token_hex(16)
_MARKER = b"runafterorderissaved"


def mentions_delay(body: Any) -> bool:
    """Return True when a raw message body contains RunAfterOrderIsSaved in any case.

    This is a cheap test that spares decoding the bodies of most other jobs.
    """
    if isinstance(body, str):
        body = body.encode("utf-8", errors="replace")
    return isinstance(body, bytes | bytearray) and _MARKER in body.lower()


def delayed_job(payload: Any) -> dict[str, Any] | None:
    """Return the job of a decoded task message when it must wait for the save.

    ``payload`` is the body as ``[args, kwargs, embed]``. Returns None for
    every other payload, also for a malformed one: the task then handles it
    and publishes the error.
    """
    if body_shape_problem(payload) is not None:
        return None
    args, kwargs, _embed = payload
    if len(args) != 1:
        return None
    progress = kwargs.get(PROGRESS_KEY)
    if isinstance(progress, Mapping) and progress.get("delayed"):
        return None
    job = args[0]
    if not isinstance(job, dict):
        return None
    step = get_any_case(job, "Step")
    if not isinstance(step, Mapping):
        return None
    if get_any_case(step, "RunAfterOrderIsSaved") is not True:
        return None
    # RunBySystemService defaults to true. Any value but a boolean makes the
    # job invalid, and the task reports that without waiting.
    if get_any_case(job, "RunBySystemService", True) is not True:
        return None
    # NOTE: other flaws of the job (a missing TenantId, a wrong SchemaVersion)
    # are found only when it runs, so such a job gets its Error result after
    # the one-second wait. A key given in two casings may also be read here
    # from another spelling than the job parser picks.
    return job


def strategy(task: Any, app: Any, consumer: Any, **options: Any) -> Callable[..., Any]:
    """Build Celery's default strategy for ``task``, with the save delay set first."""
    handle_message = default_strategy(task, app, consumer, **options)

    def handle_with_delay(
        message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **kwargs: Any
    ) -> Any:
        headers = message.headers
        if isinstance(headers, dict):
            headers.pop(SAVE_DELAY_HEADER, None)
            if headers.get("eta") is None and mentions_delay(message.body):
                job = delayed_job(_decoded(message))
                if job is not None:
                    _set_delay(headers, job)
        return handle_message(message, body, ack, reject, callbacks, **kwargs)

    return handle_with_delay


def _decoded(message: Any) -> Any:
    # kombu caches the decoded body, so Celery's request reuses this work. A
    # body that does not decode is left for Celery to reject.
    try:
        return message.payload
    except Exception:
        return None


def _set_delay(headers: dict[str, Any], job: dict[str, Any]) -> None:
    due = datetime.now(UTC) + timedelta(seconds=SAVE_DELAY_S)
    headers["eta"] = due.isoformat()
    headers[SAVE_DELAY_HEADER] = _DELAY_MARK
    job_id = usable_job_id(job)
    identity = JobIdentity.salvage(job, job_id) if job_id else None
    # This runs in the consumer thread, so the ids go on the line itself
    # rather than into the context that the job's own lines share.
    log.info(
        "job.rescheduled",
        task_id=headers.get("id"),
        job_id=job_id,
        tenant_id=identity.tenant_id if identity else None,
        order_id=identity.order_id if identity else None,
        countdown_s=SAVE_DELAY_S,
        reason="RunAfterOrderIsSaved: waiting for the order to be saved",
        attempts=0,
    )


def with_delay_done(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Return task keyword arguments that record the save delay as done."""
    progress = kwargs.get(PROGRESS_KEY)
    marked = dict(progress) if isinstance(progress, Mapping) else {}
    marked["delayed"] = True
    return {**kwargs, PROGRESS_KEY: marked}


def delay_was_set(request: Any) -> bool:
    """Return True when this worker's strategy set the save delay of ``request``.

    The mark is removed from the request, so a retry that Celery builds from
    the request does not carry it into Redis.
    """
    mark = request.get(SAVE_DELAY_HEADER)
    headers = getattr(request, "headers", None)
    if isinstance(headers, dict):
        headers.pop(SAVE_DELAY_HEADER, None)
    return isinstance(mark, str) and secrets.compare_digest(mark, _DELAY_MARK)
