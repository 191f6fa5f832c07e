"""Structured logs: structlog key-values, JSON outside a terminal, secrets redacted.

Celery's own log records go through the same processors, so a worker writes
one format. Each job binds ``job_id``, ``tenant_id``, ``order_id`` and
``connector_id`` with contextvars; the task clears them when the job ends.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from worker import secrets

REDACTED = "[REDACTED]"
# Keys whose values are never logged, whatever they contain.
_SECRET_KEYS = frozenset(
    {
        "authorization",
        "password",
        "bearer_token",
        "token",
        "secret",
        "headers",
        "cookie",
    }
)


def _redact_value(value: Any, known: frozenset[str]) -> Any:
    if isinstance(value, str):
        for secret in known:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return value
    if isinstance(value, dict):
        return {key: _redact_value(item, known) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(item, known) for item in value]
    return value


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Replace secret values and the values of secret-named keys in every event."""
    known = secrets.known_secrets()
    for key in list(event_dict):
        if key.lower() in _SECRET_KEYS:
            event_dict[key] = REDACTED
        elif known:
            event_dict[key] = _redact_value(event_dict[key], known)
    return event_dict


def _use_json(log_format: str) -> bool:
    if log_format == "json":
        return True
    if log_format == "console":
        return False
    return not sys.stderr.isatty()


def shared_processors() -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redact_secrets,
    ]


def configure_logging(log_format: str = "auto", level: str = "INFO") -> None:
    """Send structlog and stdlib logging (Celery's included) to stderr in one format."""
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if _use_json(log_format)
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            *shared_processors(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared_processors(),
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
    # Celery logs "received", "succeeded" and "retry" for every task at INFO.
    # job.finished and job.rescheduled record the same with the job's ids, so
    # only Celery's warnings and errors about tasks are kept.
    for name in ("celery.worker.strategy", "celery.app.trace"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
