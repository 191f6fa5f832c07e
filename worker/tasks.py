"""The Celery task: a thin shell that hands each delivery to StepRunner."""

from __future__ import annotations

import time
from typing import Any, NoReturn

import redis
import structlog
from celery import Task
from celery.exceptions import Reject, Retry

from worker.app import TASK_NAME, app
from worker.job import summarize

# Importing the module connects its handler to Celery's task_revoked signal.
from worker.revoked import publish_discarded  # noqa: F401
from worker.runtime import get_runner
from worker.save_delay import delay_was_set, with_delay_done
from worker.step import PROGRESS_KEY, DeadLettered, Reschedule

log = structlog.get_logger(__name__)

# How long a worker thread keeps trying to publish a retry while the broker
# is unreachable, and the pause between tries.
REPUBLISH_WINDOW_S = 20.0
REPUBLISH_PAUSE_S = 1.0
# Seconds before a job whose Redis calls failed is tried again.
REDIS_RETRY_S = 5.0


def _reschedule(
    task: Task, countdown_s: float, summary: str, **options: Any
) -> NoReturn:
    """Publish the task again after ``countdown_s``; always raises.

    When the new message cannot be sent (the broker is down), Celery rejects
    the current one without requeueing and the job would be lost. So the
    publish is tried again for up to REPUBLISH_WINDOW_S: after a Sentinel
    failover the current message may be missing on the new master, and only a
    published copy keeps the job. This waits in the worker thread, but only
    while the broker is unreachable. After that the message is requeued, and
    Redis hands it out again at the latest after the visibility timeout.
    """
    deadline = time.monotonic() + REPUBLISH_WINDOW_S
    while True:
        try:
            raise task.retry(
                countdown=countdown_s, argsrepr=summary, kwargsrepr="{}", **options
            )
        except Reject as rejection:
            if rejection.requeue:
                raise
            if time.monotonic() < deadline:
                time.sleep(REPUBLISH_PAUSE_S)
                continue
            log.error(
                "job.reschedule_failed",
                error=str(rejection.reason),
                action="job requeued unchanged",
            )
            raise Reject(rejection.reason, requeue=True) from None


@app.task(
    bind=True,
    name=TASK_NAME,
    max_retries=None,
    acks_late=True,
    Request="worker.celery_output:SummarizingRequest",
    Strategy="worker.save_delay:strategy",
)
def execute(self: Task, *args: Any, **kwargs: Any) -> str | None:
    """Run one delivery of a webhook-step job; return the result JSON text."""
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(task_id=self.request.id)
    summary = summarize(args[0] if args else None)
    if delay_was_set(self.request):
        # The worker held this delivery for the save delay when it arrived.
        kwargs = with_delay_done(kwargs)
    try:
        try:
            outcome = get_runner().run(args, kwargs)
        except redis.RedisError as error:
            log.warning(
                "job.redis_unavailable", error=str(error), retry_in_s=REDIS_RETRY_S
            )
            # The webhook may have been called already, so the retry must run
            # even after the job's expires time: it carries none.
            _reschedule(self, REDIS_RETRY_S, summary, expires=None)

        if isinstance(outcome, Reschedule):
            log.info(
                "job.rescheduled",
                countdown_s=outcome.countdown_s,
                reason=outcome.reason,
                attempts=outcome.progress.attempts,
            )
            # After a call, expires no longer applies: the job must run on
            # until it has a result.
            after_call = {"expires": None} if outcome.progress.attempts else {}
            _reschedule(
                self,
                outcome.countdown_s,
                summary,
                args=args,
                kwargs={**kwargs, PROGRESS_KEY: outcome.progress.to_message()},
                **after_call,
            )
        if isinstance(outcome, DeadLettered):
            return None
        return outcome.result_json
    except (Retry, Reject):
        raise
    except Exception as error:
        # Celery would drop the message of a failed task. Requeue it instead:
        # the delivery counter ends the job with an Error result if it keeps
        # failing.
        log.exception("job.task_failed", error=f"{type(error).__name__}: {error}")
        raise Reject(str(error), requeue=True) from None
    finally:
        structlog.contextvars.clear_contextvars()
