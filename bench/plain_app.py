"""The plain Celery baseline: a minimal task that posts the order and appends a result.

It does what any small Celery task for this step would do, with Celery's
defaults otherwise: JSON messages, results ignored, early acknowledgement and a
prefetch multiplier of 4. Start it with
``celery -A bench.plain_app worker -Q $BENCH_PLAIN_QUEUE``; bench/run.py sets
the environment variables below.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

import redis
import requests
from celery import Celery, Task

from bench.orders import PLAIN_TASK

BROKER_URL = os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/0")
QUEUE = os.environ.get("BENCH_PLAIN_QUEUE", "bench_plain")
RESULT_STREAM = os.environ.get("BENCH_PLAIN_STREAM", "bench_plain:results")
# Receiver base URL; a job's TenantId "bench-d<ms>" or "bench-rec" picks the path.
RECEIVER_URL = os.environ.get("BENCH_RECEIVER_URL", "http://127.0.0.1:8080")
SAVE_DELAY_S = 1.0

app = Celery("bench_plain", broker=BROKER_URL)
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    task_default_queue=QUEUE,
    broker_connection_retry_on_startup=True,
)

_local = threading.local()
_clients: dict[int, redis.Redis] = {}


def _session() -> requests.Session:
    session = getattr(_local, "session", None)
    if session is None:
        session = requests.Session()
        _local.session = session
    return session


def _redis() -> redis.Redis:
    # One client per process: a forked pool process must not share sockets.
    client = _clients.get(os.getpid())
    if client is None:
        client = redis.Redis.from_url(BROKER_URL)
        _clients[os.getpid()] = client
    return client


def webhook_url(tenant_id: str) -> str:
    """Return the receiver URL of a bench tenant: ``bench-d50`` waits 50 ms."""
    if tenant_id == "bench-rec":
        return f"{RECEIVER_URL}/rec/0"
    return f"{RECEIVER_URL}/hook/{tenant_id.removeprefix('bench-d')}"


@app.task(bind=True, name=PLAIN_TASK, max_retries=None)
def plain_post(self: Task, job: dict[str, Any], due: float | None = None) -> None:
    """Post the order, apply the answer to it and append a result to the stream."""
    if job["Step"].get("RunAfterOrderIsSaved") and due is None:
        raise self.retry(
            args=(job,), kwargs={"due": time.time() + SAVE_DELAY_S}, countdown=1.0
        )
    headers = {"Content-Type": "application/json", "Idempotency-Key": job["JobId"]}
    if due is not None:
        headers["X-Bench-Due"] = repr(due)
    order = job["Order"]
    response = _session().post(
        webhook_url(job["TenantId"]),
        data=json.dumps(order),
        headers=headers,
        timeout=30,
    )
    response.raise_for_status()
    order.update(response.json())
    result = {"JobId": job["JobId"], "ActionStatus": "Success", "Order": order}
    _redis().xadd(RESULT_STREAM, {"result": json.dumps(result), "job_id": job["JobId"]})
