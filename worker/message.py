"""Celery task messages as kombu's Redis transport stores them, built by hand.

kombu keeps each message as a JSON envelope in the queue's Redis list: the
body (base64 text) is ``[args, kwargs, embed]`` and the headers carry Celery's
protocol 2 task fields. ``LPUSH <queue> <envelope>`` therefore enqueues a task
without a Celery or kombu client, which is what a producer in another language
does. The README shows one complete envelope.
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

TASK_NAME = "webhook_step.execute"
# Celery's own producer sends these keys; the worker ignores their values.
EMBED_JSON = '{"callbacks":null,"errbacks":null,"chain":null,"chord":null}'


def task_headers(
    task_id: str,
    *,
    task: str | None = TASK_NAME,
    argsrepr: str = "(hand-built)",
    origin: str = "raw-producer",
) -> dict[str, Any]:
    """Return protocol 2 headers; without a task name when ``task`` is None."""
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
        "origin": origin,
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
    """Return the envelope text of one message whose body is ``body``, unchanged."""
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
    queue: str,
    args_json: str,
    *,
    kwargs_json: str = "{}",
    task_id: str | None = None,
    task: str = TASK_NAME,
    argsrepr: str = "(hand-built)",
    origin: str = "raw-producer",
) -> str:
    """Return the envelope of a task message; ``args_json`` goes into the body as is.

    Passing the arguments as JSON text keeps every number's digits exactly as
    the producer wrote them.
    """
    body = f"[{args_json},{kwargs_json},{EMBED_JSON}]"
    headers = task_headers(
        task_id or str(uuid.uuid4()), task=task, argsrepr=argsrepr, origin=origin
    )
    return envelope(queue, body.encode("utf-8"), headers)
