"""The Celery task: a thin shell that hands each delivery to StepRunner."""

from __future__ import annotations

from typing import Any

import redis
import structlog
from celery import Task

from worker.app import TASK_NAME, app
from worker.job import summarize
from worker.runtime import get_runner
from worker.step import PROGRESS_KEY, DeadLettered, Reschedule

log = structlog.get_logger(__name__)

# Seconds before a job whose Redis calls failed is tried again.
REDIS_RETRY_S = 5.0


@app.task(
    bind=True,
    name=TASK_NAME,
    max_retries=None,
    acks_late=True,
    Request="worker.celery_output:SummarizingRequest",
)
def execute(self: Task, *args: Any, **kwargs: Any) -> str | None:
    """Run one delivery of a webhook-step job; return the result JSON text."""
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(task_id=self.request.id)
    summary = summarize(args[0] if args else None)
    try:
        try:
            outcome = get_runner().run(args, kwargs)
        except redis.RedisError as error:
            log.warning(
                "job.redis_unavailable", error=str(error), retry_in_s=REDIS_RETRY_S
            )
            raise self.retry(
                countdown=REDIS_RETRY_S, argsrepr=summary, kwargsrepr="{}"
            ) from None

        if isinstance(outcome, Reschedule):
            log.info(
                "job.rescheduled",
                countdown_s=outcome.countdown_s,
                reason=outcome.reason,
                attempts=outcome.progress.attempts,
            )
            raise self.retry(
                args=args,
                kwargs={**kwargs, PROGRESS_KEY: outcome.progress.to_message()},
                countdown=outcome.countdown_s,
                argsrepr=summary,
                kwargsrepr="{}",
            )
        if isinstance(outcome, DeadLettered):
            return None
        return outcome.result_json
    finally:
        structlog.contextvars.clear_contextvars()
