"""Hand-built kombu Redis envelopes, for messages Celery's producer cannot build.

kombu's Redis transport stores each message as a JSON envelope in the queue
list: the body is base64 text and the headers carry Celery's task fields. A
test writes the envelope with ``LPUSH``, so it can send a body that is not
JSON, a foreign content type or a malformed task message, exactly as a broken
producer in another language would.
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import redis

TASK_NAME = "webhook_step.execute"
EMBED_JSON = '{"callbacks":null,"errbacks":null,"chain":null,"chord":null}'


def task_headers(
    task_id: str, *, task: str | None = TASK_NAME, argsrepr: str = "(hand-built)"
) -> dict[str, Any]:
    """Return Celery protocol 2 headers, without a task name when ``task`` is None."""
    headers: dict[str, Any] = {
        "lang": "py",
        "id": task_id,
        "root_id": task_id,
        "parent_id": None,
        "group": None,
        "retries": 0,
        "eta": None,
        "expires": None,
        "timelimit": [None, None],
        "argsrepr": argsrepr,
        "kwargsrepr": "{}",
        "origin": "reliability-producer",
    }
    if task is not None:
        headers["task"] = task
    return headers


def envelope(
    queue: str,
    body: bytes,
    headers: dict[str, Any],
    *,
    content_type: str = "application/json",
) -> str:
    """Return the envelope text of one message whose body is ``body`` as given."""
    return json.dumps(
        {
            "body": base64.b64encode(body).decode("ascii"),
            "content-type": content_type,
            "content-encoding": "utf-8" if content_type.endswith("json") else "binary",
            "headers": headers,
            "properties": {
                "correlation_id": headers.get("id"),
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": queue},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
    )


def task_envelope(
    queue: str, args_json: str, *, kwargs_json: str = "{}", task_id: str | None = None
) -> str:
    """Return the envelope of a ``webhook_step.execute`` message with these args."""
    body = f"[{args_json},{kwargs_json},{EMBED_JSON}]"
    headers = task_headers(task_id or str(uuid.uuid4()))
    return envelope(queue, body.encode("utf-8"), headers)


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
