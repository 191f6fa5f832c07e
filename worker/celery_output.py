"""Summaries of finished jobs for Celery's own logs and task events.

The task returns the result JSON, order included. Celery writes the return
value into its "Task ... succeeded" log line and into the ``task-succeeded``
event that Flower shows (celery 5.7, ``celery/app/trace.py`` and
``celery/worker/request.py``). Both get a one-line summary here instead, so an
order's data never reaches a log or an event.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from celery.worker.request import Request

_FIELD = re.compile(r'\\?"(JobId|ActionStatus|CancelWorkflow)\\?":\s*\\?"?([^",\\]*)')


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
    """Celery's task request, with the result replaced by its summary in events."""

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
