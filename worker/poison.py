"""Messages Celery cannot turn into a task call: dead-lettered, counted, then dropped.

Celery's consumer acknowledges a message it cannot decode and rejects one for
an unknown task, logging it and nothing more. This consumer first writes the
message to the dead-letter stream with the reason and counts it, so an operator
can see and replay it; then Celery drops it as before and the worker goes on.
Messages that decode but carry a bad job are handled by ``StepRunner``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from typing import Any

import redis
import structlog
from celery import signals
from celery.worker.consumer import Consumer

from worker import jsontext
from worker.job import scrub_request_headers, usable_job_id
from worker.step import redact
from worker.store import ResultStore

log = structlog.get_logger(__name__)

# Message headers copied to the dead-letter entry; others may hold anything.
_KEPT_HEADERS = ("task", "id", "root_id", "retries", "argsrepr", "origin")

_store_lock = threading.Lock()
_store: ResultStore | None = None


def _result_store() -> ResultStore:
    global _store
    with _store_lock:
        if _store is None:
            from worker.runtime import result_store
            from worker.settings import get_settings

            _store = result_store(get_settings())
        return _store


def describe_message(message: Any, body: Any = None) -> str:
    """Return a redacted JSON record of a rejected message, for the dead letters."""
    headers = message.headers if isinstance(message.headers, dict) else {}
    raw = message.body
    if isinstance(raw, str):
        raw = raw.encode("utf-8", errors="replace")
    raw = raw if isinstance(raw, bytes) else b""
    record: dict[str, Any] = {
        "content_type": message.content_type,
        "content_encoding": message.content_encoding,
        "headers": {key: headers.get(key) for key in _KEPT_HEADERS if key in headers},
        "body_bytes": len(raw),
    }
    if body is None:
        body = _lenient_json(raw)
    if body is not None:
        record["body"] = scrub_request_headers(body)
    else:
        # A body that does not parse cannot be scrubbed of request-header
        # secrets, so only its hash is kept, to match it with the producer's copy.
        record["body_text"] = "(withheld: not JSON, so its secrets cannot be hidden)"
        record["body_sha256"] = hashlib.sha256(raw).hexdigest()
    try:
        text = jsontext.dumps(record)
    except (TypeError, ValueError):
        record.pop("body", None)
        record["body_text"] = "(withheld: the body could not be encoded as JSON)"
        text = jsontext.dumps(record)
    return redact(text)


def _lenient_json(raw: bytes) -> Any:
    """Parse ``raw`` with Python's json module, which accepts NaN; None on failure."""
    try:
        return json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError, UnicodeDecodeError):
        return None


def salvage_job(message: Any, body: Any) -> Any:
    """Return the job in a rejected message's body, when one can be read at all.

    Python's json module is lenient where the worker's codec is strict (NaN,
    Infinity), so a job with such a value still shows its JobId here.
    """
    candidate = body
    if candidate is None:
        raw = message.body
        candidate = _lenient_json(
            raw if isinstance(raw, bytes) else str(raw).encode("utf-8", "replace")
        )
    if isinstance(candidate, list | tuple) and candidate:
        arguments = candidate[0]
        if isinstance(arguments, list | tuple) and arguments:
            return arguments[0]
    return None


def dead_letter_message(kind: str, reason: str, message: Any, body: Any) -> bool:
    """Dead-letter a rejected message, and give its job an Error result if it has one.

    Returns False when Redis failed, so the caller leaves the message unacknowledged.
    """
    headers = message.headers if isinstance(message.headers, dict) else {}
    task_id = str(headers.get("id") or "")
    job = salvage_job(message, body)
    job_id = usable_job_id(job) or ""
    log.error(
        "message.rejected", kind=kind, reason=reason, task_id=task_id, job_id=job_id
    )
    try:
        if job_id:
            from worker.runtime import get_runner

            get_runner().publish_rejection(job, f"the job was rejected: {reason}")
        _result_store().dead_letter(
            reason, describe_message(message, body), kind=kind, job_id=job_id
        )
    except redis.RedisError as error:
        log.error(
            "message.dead_letter_failed",
            kind=kind,
            task_id=task_id,
            error=str(error),
            action="left unacknowledged; Redis delivers it again after the "
            "visibility timeout",
        )
        return False
    return True


class DeadLetterConsumer(Consumer):  # type: ignore[misc]
    """Celery's consumer, with every message it rejects sent to the dead-letter stream.

    Celery's own handlers log the message body, which holds the order and may
    hold request-header secrets, so these handlers replace them instead of
    extending them.
    """

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Any:
        """Wrap Celery's handler so that no message can stop the consumer."""
        handle = super().create_task_handler(*args, **kwargs)

        def guarded(message: Any) -> Any:
            try:
                return handle(message)
            except (KeyError, TypeError, ValueError) as error:
                # Celery reads the body's parts without checking its shape.
                reason = (
                    "the task message body is not [args, kwargs, embed] "
                    f"({type(error).__name__}: {error})"
                )
                return self._drop("invalid_task", reason, message, None)
            except Exception as error:
                reason = (
                    f"the worker could not accept the message "
                    f"({type(error).__name__}: {error})"
                )
                log.exception("message.unexpected_error")
                return self._drop("unexpected_error", reason, message, None)

        return guarded

    def _drop(self, kind: str, reason: str, message: Any, body: Any) -> None:
        if dead_letter_message(kind, reason, message, body):
            message.reject_log_error(
                logging.getLogger(__name__), self.connection_errors
            )
            signals.task_rejected.send(sender=self, message=message, exc=None)

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        reason = (
            f"the message could not be decoded ({type(exc).__name__}: {exc}); "
            "send JSON (content type application/json) as a Celery task message"
        )
        self._drop("not_decodable", reason, message, None)

    def on_unknown_message(self, body: Any, message: Any) -> None:
        reason = (
            "the message is not a Celery task message (no task name in its "
            "headers); send it as a Celery protocol 2 task message"
        )
        self._drop("unknown_message", reason, message, body)

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        headers = message.headers if isinstance(message.headers, dict) else {}
        reason = (
            f"no task named {headers.get('task')!r} runs on this queue; the webhook "
            "step task is 'webhook_step.execute'"
        )
        self._drop("unknown_task", reason, message, body)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        reason = f"the task message is invalid: {exc}"
        self._drop("invalid_task", reason, message, body)
