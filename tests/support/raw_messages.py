"""Hand-built kombu Redis envelopes, for messages Celery's producer cannot build.

The envelopes come from ``worker.message``; this module adds what only tests need.

kombu's Redis transport stores each message as a JSON envelope in the queue
list: the body is base64 text and the headers carry Celery's task fields. A
test writes the envelope with ``LPUSH``, so it can send a body that is not
JSON, a foreign content type or a malformed task message, exactly as a broken
producer in another language would.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import redis

from worker.message import (  # noqa: F401 (re-exported for the tests)
    EMBED_JSON,
    TASK_NAME,
    envelope,
    task_envelope,
    task_headers,
)


def push_envelopes(
    client: redis.Redis, queue: str, envelopes: list[str], batch: int = 1000
) -> None:
    """LPUSH the envelopes in pipelines of ``batch``; the worker takes them in order."""
    for start in range(0, len(envelopes), batch):
        pipe = client.pipeline(transaction=False)
        for text in envelopes[start : start + batch]:
            pipe.lpush(queue, text)
        pipe.execute()


def job_id_of_envelope(message: str | bytes | dict[str, Any]) -> str | None:
    """Return the JobId in a task message's first argument, or None.

    ``message`` is an envelope as the queue list stores it, as text or parsed.
    """
    try:
        parsed = json.loads(message) if isinstance(message, str | bytes) else message
        body = json.loads(base64.b64decode(parsed["body"]))
        job = body[0][0]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    job_id = job.get("JobId") if isinstance(job, dict) else None
    return job_id if isinstance(job_id, str) else None
