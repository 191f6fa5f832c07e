"""What Celery's own logs and task events show: result summaries, one outage line.

The task returns the result JSON, order included. Celery writes the return
value into its "Task ... succeeded" log line and into the ``task-succeeded``
event that Flower shows (celery 5.7, ``celery/app/trace.py`` and
``celery/worker/request.py``). Both get a one-line summary here instead, so an
order's data never reaches a log or an event.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from datetime import UTC, datetime
from typing import Any

import structlog
from celery.exceptions import InvalidTaskError
from celery.worker.request import Request

from worker.settings import get_settings

_FIELD = re.compile(r'\\?"(JobId|ActionStatus|CancelWorkflow)\\?":\s*\\?"?([^",\\]*)')


def body_shape_problem(body: Any) -> str | None:
    """Return why a decoded task body is not ``[args, kwargs, embed]``, or None."""
    if not isinstance(body, list | tuple) or len(body) != 3:
        return (
            "the task message body must be a JSON array of three items, "
            "[args, kwargs, embed]"
        )
    args, kwargs, embed = body
    if not isinstance(args, list | tuple):
        return "the first item of the task message body (args) must be an array"
    if not isinstance(kwargs, dict):
        return "the second item of the task message body (kwargs) must be an object"
    if embed is not None and not isinstance(embed, dict):
        return "the third item of the task message body (embed) must be an object"
    return None


def header_time_problem(
    headers: dict[str, Any], *, max_eta_ahead_s: float | None = None
) -> str | None:
    """Return why a task message's ``eta`` or ``expires`` header is unusable, or None.

    Celery expects an ISO 8601 time or null, and fails with an unrelated error
    on anything else, such as a number, an empty string or a time that does
    not convert to UTC. An ``eta`` more than ``max_eta_ahead_s`` ahead is
    refused too: Redis would hand the held message to another worker first.
    """
    for name in ("eta", "expires"):
        value = headers.get(name)
        if value is None:
            continue
        moment = _utc_time(value)
        if moment is None:
            return (
                f"the task message header {name!r} must be an ISO 8601 time such "
                f"as 2026-01-31T12:00:00+00:00, or null; got {value!r:.60}"
            )
        if name == "eta" and max_eta_ahead_s is not None:
            ahead_s = (moment - datetime.now(UTC)).total_seconds()
            if ahead_s > max_eta_ahead_s:
                return (
                    f"the task message header 'eta' is {ahead_s:.0f} s ahead, more "
                    f"than VISIBILITY_TIMEOUT_S ({max_eta_ahead_s:g} s), so Redis "
                    "would hand the message to another worker while this one holds "
                    "it; send the job closer to its time"
                )
    return None


def _utc_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        moment = datetime.fromisoformat(value)
        if moment.tzinfo is None:
            # Taken as UTC; the checks here do not need the worker's zone.
            moment = moment.replace(tzinfo=UTC)
        return moment.astimezone(UTC)
    except (ValueError, OverflowError):
        return None


def summarize_result(text: Any) -> str:
    """Return ``(job_id=…, action_status=…, cancel_workflow=…)`` for a result text.

    ``text`` may be the JSON itself or Celery's truncated repr of it; fields the
    text does not contain are left out.
    """
    if text is None:
        return "(no result)"
    found = {name: value for name, value in _FIELD.findall(str(text))}
    parts = [
        f"job_id={found['JobId']}" if "JobId" in found else None,
        f"action_status={found['ActionStatus']}" if "ActionStatus" in found else None,
        f"cancel_workflow={found['CancelWorkflow']}"
        if "CancelWorkflow" in found
        else None,
    ]
    shown = [part for part in parts if part]
    return f"({', '.join(shown)})" if shown else "(result)"


class SummarizingRequest(Request):  # type: ignore[misc]
    """Celery's task request, with the result replaced by its summary in events.

    It also checks the message body's shape, ``[args, kwargs, embed]``. Celery
    unpacks the body without a check, so a body of another shape either stops
    the worker or leaves the message unacknowledged forever; here it becomes an
    InvalidTaskError, which the consumer dead-letters.
    """

    def __init__(self, message: Any, *args: Any, **kwargs: Any) -> None:
        headers = getattr(message, "headers", None)
        problem = header_time_problem(
            headers if isinstance(headers, dict) else {},
            max_eta_ahead_s=get_settings().visibility_timeout_s,
        )
        if problem is not None:
            raise InvalidTaskError(problem)
        try:
            super().__init__(message, *args, **kwargs)
            body = self._Request__payload
        except InvalidTaskError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise InvalidTaskError(
                f"the task message body is not [args, kwargs, embed] "
                f"({type(error).__name__}: {error})"
            ) from None
        problem = body_shape_problem(body)
        if problem is not None:
            raise InvalidTaskError(problem)

    def send_event(self, type: str, **fields: Any) -> None:
        if type == "task-succeeded" and "result" in fields:
            fields["result"] = summarize_result(fields["result"])
        super().send_event(type, **fields)


class ResultSummaryFilter(logging.Filter):
    """Replaces the return value in Celery's "Task … succeeded" log record."""

    def filter(self, record: logging.LogRecord) -> bool:
        arguments = record.args
        if isinstance(arguments, dict) and "return_value" in arguments:
            record.args = {
                **arguments,
                "return_value": summarize_result(arguments["return_value"]),
            }
        return True


class BrokerOutageFilter(logging.Filter):
    """Lets the first broker connection error of an outage through, and drops repeats.

    Celery logs one line per reconnection attempt. This filter keeps the first,
    counts the rest, and on Celery's next "Connected to" line logs
    ``broker.reconnected`` with the outage's length and the dropped count.
    """

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith("Connected to"):
            with self._lock:
                down_since, dropped = self._down_since, self._dropped
                self._down_since, self._dropped = None, 0
            if down_since is not None:
                structlog.get_logger(__name__).warning(
                    "broker.reconnected",
                    outage_s=round(time.monotonic() - down_since, 1),
                    repeated_errors_not_logged=dropped,
                )
            return True
        if not message.startswith(_OUTAGE_PREFIXES):
            return True
        with self._lock:
            if self._down_since is None:
                self._down_since = time.monotonic()
                return True
            self._dropped += 1
            return False


_OUTAGE_PREFIXES = ("consumer: Cannot connect", "consumer: Connection to broker lost")
_outage_filter = BrokerOutageFilter()


def install_log_filters() -> None:
    """Attach the filters above to Celery's loggers; calling it again is harmless."""
    loggers = {
        "celery.app.trace": ResultSummaryFilter,
        "celery.worker.consumer.consumer": BrokerOutageFilter,
        "celery.worker.consumer.connection": BrokerOutageFilter,
    }
    for name, kind in loggers.items():
        logger = logging.getLogger(name)
        if any(isinstance(existing, kind) for existing in logger.filters):
            continue
        logger.addFilter(
            _outage_filter if kind is BrokerOutageFilter else ResultSummaryFilter()
        )
